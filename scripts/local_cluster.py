"""Three local `flotilla node` processes for the measuring scripts (idle_cpu.py,
replica_memory.py): client ports 7071-7073, node-to-node ports 7171-7173, metrics
8071-8073, data under the directory given."""
import os, re, subprocess, urllib.request

BOOTSTRAP = ["--bootstrap", "127.0.0.1:7071,127.0.0.1:7072,127.0.0.1:7073"]
PEERS = ",".join(f"{i}=127.0.0.1:{7170+i}" for i in (1, 2, 3))


def start(binary, data_dir, extra=()):
    """Starts the three nodes on an emptied `data_dir`; returns {id: Popen}."""
    subprocess.run(["rm", "-rf", data_dir])
    os.makedirs(data_dir)
    return {i: subprocess.Popen([binary, "node", "--id", str(i), "--listen", f"127.0.0.1:{7070+i}",
                                 "--data-dir", f"{data_dir}/node-{i}", "--peers", PEERS,
                                 "--metrics-listen", f"127.0.0.1:{8070+i}", *extra],
                                stdout=open(f"{data_dir}/node-{i}.log", "w"), stderr=subprocess.STDOUT)
            for i in (1, 2, 3)}


def metric(i, name):
    """Node i's value of an unlabelled metric, or None."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{8070+i}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else None


def cpu_seconds(proc):
    """User and system CPU time of a process, from /proc."""
    f = open(f"/proc/{proc.pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(proc):
    """Resident memory of a process, from /proc."""
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
