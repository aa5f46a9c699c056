package index

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// holder describes the process that holds the index file at path locked,
// as the kernel's lock table tells it: its pid and command line. It
// returns "" when that cannot be told (another pid namespace, no /proc).
func holder(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ""
	}
	// /proc/locks names a file by its device as major:minor in hex and
	// its inode: "2: FLOCK  ADVISORY  WRITE 2807 fe:00:779281 0 EOF".
	file := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return ""
	}
	defer func() { _ = locks.Close() }()
	scanner := bufio.NewScanner(locks)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != file {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + fields[4] + "/cmdline")
		command := strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
		if command == "" {
			return "pid " + fields[4]
		}
		return fmt.Sprintf("pid %d: %s", pid, command)
	}
	return ""
}
