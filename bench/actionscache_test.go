package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// cacheRoundTrip saves data with the real @actions/cache, removes it,
// restores it, and prints how long each took.
const cacheRoundTrip = `const cache = require('@actions/cache');
const fs = require('fs');
(async () => {
  const key = process.argv[2];
  let start = Date.now();
  const id = await cache.saveCache(['data'], key);
  const save = (Date.now() - start) / 1000;
  if (id === undefined || id === -1) { console.log('save failed'); process.exit(1); }
  fs.rmSync('data', { recursive: true });
  start = Date.now();
  const hit = await cache.restoreCache(['data'], key);
  const restore = (Date.now() - start) / 1000;
  if (hit !== key) { console.log('restore missed'); process.exit(1); }
  console.log('save-seconds: ' + save + ' restore-seconds: ' + restore);
})();
`

// cacheJobWorkflow writes size random bytes, saves and restores them, and
// checks that they came back whole.
func cacheJobWorkflow(file, label, scripts string, size int) string {
	return fmt.Sprintf(`on:
  push:
    paths: ['.gitea/workflows/%s']
jobs:
  j:
    runs-on: %s
    steps:
      - shell: bash
        run: |
          mkdir -p data
          head -c %d /dev/urandom > data/blob
          before=$(sha256sum data/blob)
          node %s/roundtrip.js "bench-${{ github.run_number }}"
          test "$(sha256sum data/blob)" = "$before"
`, file, label, size, scripts)
}

// BenchmarkActionsCache saves and restores a 256 MiB directory with
// @actions/cache in a job under gitea_runner with its actions_cache, and
// under Gitea's runner v1.0.8 with its built-in cache server, alternating,
// on the same Gitea, image and machine.
func BenchmarkActionsCache(b *testing.B) {
	clients := harness.ActionsClients(b)
	image := harness.NewDocker(b).NodeJobImage()
	g, token := harness.StartGiteaWithRepo(b, "bench")
	scripts := b.TempDir()
	if err := os.WriteFile(filepath.Join(scripts, "roundtrip.js"), []byte(cacheRoundTrip), 0o644); err != nil {
		b.Fatal(err)
	}
	nodePath := filepath.Join(clients, "node_modules")
	mounts := fmt.Sprintf("--volume %[1]s:%[1]s:ro --volume %[2]s:%[2]s:ro", clients, scripts)

	harness.StartCaddy(b, harness.Caddyfile{
		Runner: &harness.RunnerBlock{
			Instance: g.URL, RegistrationToken: token, Labels: "ours:docker://" + image,
			Options: []string{"name gitea-runner-ours", "fetch_interval 1s", "actions_cache main", "env NODE_PATH " + nodePath},
			Container: []string{"network host", "docker_host -", `options "` + mounts + `"`,
				"valid_volumes " + clients + " " + scripts},
		},
		Sites: []string{fmt.Sprintf("http://127.0.0.1:{$CADDY_HTTP_PORT} {\n\tactions_cache {\n\t\tname main\n\t\turl http://127.0.0.1:{$CADDY_HTTP_PORT}/\n\t\troot %s\n\t}\n}", b.TempDir())},
	}.String(), harness.CaddyOptions{})
	cacheDir := b.TempDir()
	startGiteaRunnerWith(b, g.URL, token, "theirs:docker://"+image, func(dir string) string {
		return fmt.Sprintf(`log:
  level: info
runner:
  file: %[1]s/.runner
  capacity: 1
  fetch_interval: 1s
  envs:
    NODE_PATH: %[2]s
cache:
  enabled: true
  dir: %[3]s
  host: 127.0.0.1
container:
  network: host
  docker_host: "-"
  options: %[4]s
  valid_volumes: [%[5]s, %[6]s]
host:
  workdir_parent: %[1]s/host
`, dir, nodePath, cacheDir, mounts, clients, scripts)
	})
	time.Sleep(3 * time.Second) // both registered and polling

	const size = 256 << 20
	save := newComparison("Actions cache: save of a 256 MiB directory with @actions/cache 4.1.0 (tar, zstd, upload)", "s", "lower",
		"gitea_runner no slower than Gitea's runner")
	restore := newComparison("Actions cache: restore of the same directory (lookup, download, untar)", "s", "lower",
		"gitea_runner no slower than Gitea's runner")
	for _, c := range []*comparison{save, restore} {
		c.holds = ratioAtMost("gitea_runner", "Gitea's runner v1.0.8", 1.0)
		c.notes = append(c.notes, "Timed inside the job by the client, the same image, client and random data for both; the archive is as large as the data, which zstd cannot shrink. "+
			"The client compresses and archives before it uploads and unpacks after it downloads, so part of each figure is the client's own work.")
	}
	contenders := []struct{ label, name string }{{"ours", "gitea_runner"}, {"theirs", "Gitea's runner v1.0.8"}}
	seconds := regexp.MustCompile(`save-seconds: ([0-9.]+) restore-seconds: ([0-9.]+)`)
	for i := 0; i < envInt("BENCH_ROUNDS", 3); i++ {
		order := slices.Clone(contenders)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, r := range order {
			file := fmt.Sprintf("cache-%s-%d.yml", r.label, i)
			sha := g.CommitWorkflow("bench", file, cacheJobWorkflow(file, r.label, scripts, size))
			run := g.WaitRun("bench", sha, 10*time.Minute, harness.Completed)
			log := g.JobLog("bench", g.Jobs("bench", run.ID)[0].ID)
			m := seconds.FindStringSubmatch(log)
			if run.Conclusion != "success" || m == nil {
				b.Fatalf("the %s job concluded %s:\n%s", r.name, run.Conclusion, log)
			}
			saveSeconds, _ := strconv.ParseFloat(m[1], 64)
			restoreSeconds, _ := strconv.ParseFloat(m[2], 64)
			save.add(r.name, saveSeconds)
			restore.add(r.name, restoreSeconds)
			b.Logf("%s: save %.2f s, restore %.2f s", r.name, saveSeconds, restoreSeconds)
		}
	}
}
