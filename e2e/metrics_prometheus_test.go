package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// metricsWorkflow builds two new paths with Nix (pushed automatically) and
// looks up an actions cache entry that does not exist.
var metricsWorkflow = `on: [push]
jobs:
  build:
    runs-on: self-hosted
    steps:
      - name: build
        run: |
` + closureScript("NONCE", "  a = mk \"metrics-a\" [];\nin mk \"metrics-b\" [ a ]") + `
          nix-build /tmp/closure.nix --no-out-link
      - name: an actions cache lookup
        run: |
          curl -sS -o /dev/null -w 'lookup %{http_code}\n' -H "Authorization: Bearer $ACTIONS_RUNTIME_TOKEN" \
            "${ACTIONS_CACHE_URL}_apis/artifactcache/cache?keys=none&version=1"
`

// grafanaDashboard is what the test reads of deploy/grafana's dashboard.
type grafanaDashboard struct {
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query struct {
				Query string `json:"query"`
			} `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// TestPrometheusScrapesTheDashboardsMetrics scrapes a real caddy, with a
// runner, a Nix cache and an actions cache at work, with a real Prometheus
// and asks Prometheus, through its HTTP API, for every metric the Grafana
// dashboard in deploy/grafana uses, and evaluates every panel's query: a
// metric renamed or left out of the dashboard fails here.
func TestPrometheusScrapesTheDashboardsMetrics(t *testing.T) {
	prometheus := harness.LookTool(t, "prometheus")
	docker := harness.NewDocker(t)
	image := docker.NixJobImage()
	g, registrationToken := harness.StartGiteaWithRepo(t, "pkgs")

	var dashboard grafanaDashboard
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "deploy", "grafana", "cargoxx-runner.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dashboard); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}

	dir := t.TempDir()
	secret, _ := harness.TempKeygen(t, "metrics-1")
	const uploadToken = "metrics-upload-token"
	metricsPort := harness.FreePort(t)
	config := harness.RunnerCache(g.URL, registrationToken, "self-hosted:docker://"+image, "host",
		filepath.Join(dir, "nix"), secret, "fetch_interval 500ms", "actions_cache main")
	config.Cache.Upload = []string{"token " + uploadToken}
	config.Sites = []string{
		fmt.Sprintf("%s {\n\tbind 127.0.0.1\n\tactions_cache {\n\t\tname main\n\t\turl %[1]s/\n\t\troot %s\n\t}\n}",
			actionsCacheURL, filepath.Join(dir, "actions")),
		fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tmetrics\n}", metricsPort),
	}
	caddy := harness.StartCaddy(t, config.String(), harness.CaddyOptions{})

	promPort := harness.FreePort(t)
	promConfig := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promConfig, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: caddy
    static_configs:
      - targets: ["127.0.0.1:%d"]
`, metricsPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	process, err := harness.StartProcess("prometheus", exec.Command(prometheus, "--config.file="+promConfig,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort)),
		filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		process.Stop(10 * time.Second)
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus's log:\n%s", log)
		}
	})
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	waitServing(t, promURL+"/-/ready", process.Exited)

	// The host at work: a job builds and pushes, looks up the actions
	// cache; a client asks for a path the cache lacks, makes a bad upload
	// and asks the actions cache without a token; a collection runs.
	sha := g.CommitWorkflow("pkgs", "build.yml", strings.ReplaceAll(metricsWorkflow, "NONCE", fmt.Sprint(time.Now().UnixNano())))
	run := g.WaitRun("pkgs", sha, 5*time.Minute, harness.Completed)
	if job := g.Jobs("pkgs", run.ID)[0]; run.Conclusion != "success" {
		t.Fatalf("the job concluded %q:\n%s", run.Conclusion, g.JobLog("pkgs", job.ID))
	} else if log := g.JobLog("pkgs", job.ID); !strings.Contains(log, "lookup 204") {
		t.Fatalf("the job's actions cache lookup did not miss:\n%s", log)
	}
	if status, _, err := getBody(caddy.URL() + "/0000000000000000000000000000000a.narinfo"); err != nil || status != http.StatusNotFound {
		t.Fatalf("a narinfo the cache lacks: %d, %v", status, err)
	}
	req, _ := http.NewRequest(http.MethodPut, caddy.URL()+"/0000000000000000000000000000000a.narinfo", strings.NewReader("not a narinfo\n"))
	req.SetBasicAuth("nix", uploadToken)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode/100 != 4 {
		t.Fatalf("a malformed narinfo upload got %s, want a 4xx", resp.Status)
	}
	if status, _, err := getBody(fmt.Sprintf("http://127.0.0.1:%d/_apis/artifactcache/cache?keys=k&version=1", caddy.HTTPSPort)); err != nil || status != http.StatusUnauthorized {
		t.Fatalf("an actions cache lookup without a token: %d, %v; want 401", status, err)
	}
	if resp, err := caddy.AdminDo(http.MethodPost, "/nix-cache/gc?max_size=1073741824&min_age=0s", nil); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /nix-cache/gc: %s", resp.Status)
	}

	// Every metric family of this bundle that caddy exposes is in the
	// dashboard.
	status, exposition, err := getBody(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil || status != http.StatusOK {
		t.Fatalf("caddy's metrics site: %d, %v", status, err)
	}
	var exprs []string
	for _, panel := range dashboard.Panels {
		for _, target := range panel.Targets {
			exprs = append(exprs, target.Expr)
		}
	}
	used := map[string]bool{}
	for _, name := range regexp.MustCompile(`caddy_[a-z_]+`).FindAllString(strings.Join(exprs, "\n"), -1) {
		used[name] = true
	}
	scanner := bufio.NewScanner(strings.NewReader(exposition))
	families := 0
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) != 4 || fields[1] != "TYPE" || !regexp.MustCompile(`^caddy_(nix_cache|gitea_runner|actions_cache)_`).MatchString(fields[2]) {
			continue
		}
		families++
		name := fields[2]
		if fields[3] == "histogram" {
			name += "_bucket"
		}
		if !used[name] {
			t.Errorf("the dashboard does not show %s (%s)", name, fields[3])
		}
	}
	if families < 30 {
		t.Fatalf("caddy exposes only %d metric families of this bundle:\n%s", families, exposition)
	}

	// Prometheus has every metric the dashboard uses, and every panel's
	// query evaluates.
	query := func(expr string) ([]json.RawMessage, error) {
		resp, err := http.Get(promURL + "/api/v1/query?query=" + url.QueryEscape(expr))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var answer struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			return nil, err
		}
		if answer.Status != "success" {
			return nil, fmt.Errorf("%s: %s", expr, answer.Error)
		}
		return answer.Data.Result, nil
	}
	names := make([]string, 0, len(used))
	for name := range used {
		names = append(names, name)
	}
	slices.Sort(names)
	if err := harness.Eventually(time.Minute, time.Second, func() error {
		for _, name := range names {
			result, err := query(name)
			if err != nil {
				return err
			}
			if len(result) == 0 {
				return fmt.Errorf("prometheus has no series of %s, which the dashboard uses", name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	grafana := strings.NewReplacer("$__rate_interval", "1m", "$cache", ".*")
	for _, expr := range exprs {
		if _, err := query(grafana.Replace(expr)); err != nil {
			t.Errorf("a panel's query does not evaluate: %v", err)
		}
	}
	for _, variable := range dashboard.Templating.List {
		m := regexp.MustCompile(`^label_values\((\w+), (\w+)\)$`).FindStringSubmatch(variable.Query.Query)
		if m == nil {
			t.Fatalf("the dashboard variable %s has the query %q, which the test cannot ask Prometheus", variable.Name, variable.Query.Query)
		}
		result, err := query(fmt.Sprintf("count by (%s) (%s)", m[2], m[1]))
		listed := fmt.Sprintf("%s", result)
		if err != nil || !strings.Contains(listed, `"main"`) {
			t.Errorf("the dashboard variable %s lists %s, without the cache main (%v)", variable.Name, listed, err)
		}
	}
	if err := process.Exited(); err != nil {
		t.Fatal(err)
	}
}
