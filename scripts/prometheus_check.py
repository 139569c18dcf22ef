#!/usr/bin/env python3
"""Check the Grafana dashboard and the Prometheus alert rules against live nodes.

Usage: scripts/prometheus_check.py --targets 127.0.0.1:8070,127.0.0.1:8071,127.0.0.1:8072
           [--prometheus /usr/bin/prometheus] [--promtool /usr/bin/promtool] [--timeout 60] [--keep DIR]

1. `promtool check rules deploy/prometheus/alerts.yml` must pass.
2. Starts a real Prometheus (free port, temporary storage) scraping the targets every second
   as job "flotilla", with the rules loaded, and waits for /-/ready.
3. Every PromQL expression in deploy/grafana/flotilla.json (panel queries and label_values()
   variables, Grafana variables replaced) and in the rules' annotation templates must parse:
   Prometheus answers 400 otherwise.
4. Every metric name those expressions and the rule expressions use (identifiers starting with
   flotilla_ or process_, and up; queried exactly as written, so a histogram used as
   x_bucket is looked up as x_bucket) must have a series before --timeout seconds pass,
   and every target must be up.
5. /api/v1/rules must list every rule of the file, each evaluated with health "ok".
Prints one line per metric (found / MISSING) and exits 1 naming what failed. Prometheus is
stopped and its directory removed in every case (--keep DIR runs it in DIR and keeps DIR).
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time
import urllib.error, urllib.parse, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "flotilla.json")
JOB = "flotilla"
# Grafana's built-in interval variables; any other $var (a multi-value template variable
# used in a =~ matcher) becomes ".*".
INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600",
             "__interval_ms": "15000", "__range_ms": "3600000"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
IDENT = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")


def grafana_to_promql(expr):
    """Replaces Grafana's $var, ${var}, ${var:format} and [[var]] with plausible values."""
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return INTERVALS.get(name, ".*")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)


def metric_names(expr):
    """Metric names an expression selects: flotilla_*, process_* and up, as written."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    for ident in IDENT.findall(STRING.sub('""', expr)):
        if ident.startswith(("flotilla_", "process_")) or ident == "up":
            names.add(ident)
    return names


def dashboard_exprs(path):
    """(where, PromQL) for every panel query and label_values() variable of the dashboard."""
    with open(path) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f'panel "{p.get("title")}" {t.get("refId", "")}', t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q, re.S)
        if v.get("type") == "query" and m:
            out.append((f'variable "{v["name"]}"', m.group(1)))
    return out


def annotation_queries(rule):
    """PromQL passed to `query "..."` in a rule's annotation templates."""
    out = []
    for text in rule.get("annotations", {}).values():
        for lit in re.findall(r'\bquery\s+("(?:[^"\\]|\\.)*")', text):
            out.append(json.loads(lit))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base, path, **params):
    """(HTTP status, decoded JSON or None) of a GET on the Prometheus API."""
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", required=True, help="comma-separated host:port of the nodes' metrics")
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--promtool", default=shutil.which("promtool") or "/usr/bin/promtool")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--keep", metavar="DIR", help="run Prometheus in DIR and keep it afterwards")
    a = ap.parse_args()
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` cleans up
    for tool in (a.promtool, a.prometheus):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (Debian: apt-get install prometheus)")

    r = subprocess.run([a.promtool, "check", "rules", RULES], capture_output=True, text=True)
    print((r.stdout + r.stderr).strip())
    if r.returncode != 0:
        sys.exit("promtool check rules failed")
    # The rules' unit tests: each alert fires when and with what it should.
    r = subprocess.run([a.promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                       cwd=os.path.dirname(RULES))
    print((r.stdout + r.stderr).strip())
    if r.returncode != 0:
        sys.exit("promtool test rules failed (deploy/prometheus/alerts_test.yml)")
    with open(RULES) as f:
        rule_count = len(re.findall(r"^\s*-\s*(?:alert|record)\s*:", f.read(), re.M))
    panels = dashboard_exprs(DASHBOARD)  # also fails here if the JSON does not parse

    work = os.path.abspath(a.keep) if a.keep else tempfile.mkdtemp(prefix="flotilla-prom-")
    os.makedirs(work, exist_ok=True)
    proc = None
    try:
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                    f"rule_files:\n  - {json.dumps(RULES)}\n"
                    f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
                    f"      - targets: {json.dumps(targets)}\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(os.path.join(work, "prometheus.log"), "w")
        proc = subprocess.Popen([a.prometheus, f"--config.file={config}",
                                 f"--storage.tsdb.path={os.path.join(work, 'data')}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + a.timeout
        while True:
            if proc.poll() is not None:
                sys.exit(f"prometheus exited with {proc.returncode}; see {log.name}:\n" + open(log.name).read()[-3000:])
            try:
                if urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                sys.exit(f"prometheus at {base} not ready within {a.timeout:g} s")
            time.sleep(0.2)
        print(f"prometheus {base} ready, scraping {', '.join(targets)}")
        failures = []

        # The rules as Prometheus loaded them; wait until each has been evaluated.
        while True:
            status, body = get(base, "/api/v1/rules")
            loaded = body["data"]["groups"] if status == 200 else []
            rules = [r for g in loaded for r in g["rules"]]
            groups = {g["name"] for g in loaded}
            if len(rules) == rule_count and all(r["health"] != "unknown" for r in rules) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if JOB not in groups:
            failures.append(f'no rule group "{JOB}" loaded (groups: {sorted(groups)})')
        if len(rules) != rule_count:
            failures.append(f"{len(rules)} rules loaded, {RULES} has {rule_count}")
        for r in rules:
            if r["health"] != "ok":
                failures.append(f'rule {r["name"]}: health {r["health"]} {r.get("lastError", "")}'.strip())
        print(f"rules: {len(rules)} loaded, {sum(r['health'] == 'ok' for r in rules)} evaluated ok")

        # Every expression must parse; collect the metric names they use.
        exprs = [(where, grafana_to_promql(e)) for where, e in panels]
        exprs += [(f'rule {r["name"]} annotation', q) for r in rules for q in annotation_queries(r)]
        names = set()
        for where, expr in exprs:
            status, body = get(base, "/api/v1/query", query=expr)
            if status != 200:
                error = body.get("error") if isinstance(body, dict) else f"HTTP {status}"
                failures.append(f"{where}: {error}: {expr}")
            names |= metric_names(expr)
        for r in rules:
            names |= metric_names(r["query"])
        print(f"queries: {len(exprs)} dashboard and annotation expressions checked with /api/v1/query")

        # Wait until every target is up and every metric has a series, or the deadline.
        found = {}
        while True:
            for name in sorted(names - found.keys()):
                status, body = get(base, "/api/v1/query", query=f'count({{__name__="{name}",job="{JOB}"}})')
                if status == 200 and body["data"]["result"]:
                    found[name] = int(float(body["data"]["result"][0]["value"][1]))
            _, body = get(base, "/api/v1/query", query=f'up{{job="{JOB}"}} == 1')
            down = set(targets) - {r["metric"]["instance"] for r in body["data"]["result"]}
            if len(found) == len(names) and not down or time.monotonic() > deadline:
                break
            time.sleep(1)
        missing = sorted(names - found.keys())
        for name in sorted(names):
            print(f"  found    {name} ({found[name]} series)" if name in found else f"  MISSING  {name}")
        if missing:
            failures.append(f"{len(missing)} of {len(names)} metrics have no series after {a.timeout:g} s: "
                            + ", ".join(missing))
        if down:
            failures.append("targets not up: " + ", ".join(sorted(down)))

        if failures:
            print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
            return 1
        print(f"OK: {len(names)} metrics found, {len(rules)} rules ok, {len(exprs)} queries parse")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
