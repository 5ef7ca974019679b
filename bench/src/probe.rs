//! Per-process CPU time and peak RSS around a phase: every cluster component and the bench
//! itself, so a figure can be read as a cost and not only as a rate.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::BenchCluster;
use crate::load::round3;
use crate::procstat;

pub struct Probe {
    pub cpu0: HashMap<u32, f64>,
    pub client0: f64,
}

pub fn probe_start(cluster: &BenchCluster) -> Probe {
    let mut cpu0 = HashMap::new();
    for (_, pid) in cluster.component_pids() {
        cpu0.insert(pid, procstat::cpu_seconds(pid).unwrap_or(0.0));
        procstat::reset_peak_rss(pid);
    }
    procstat::reset_peak_rss(std::process::id());
    Probe {
        cpu0,
        client0: procstat::self_cpu_seconds(),
    }
}

/// Per component: CPU seconds during the phase and peak RSS; plus a one-line summary.
pub fn probe_end(cluster: &BenchCluster, p: &Probe, elapsed: Duration) -> (Value, String) {
    let mut comps = serde_json::Map::new();
    let (mut nats, mut mgr, mut gw, mut servers, mut servers_rss) = (0.0, 0.0, 0.0, 0.0, 0.0f64);
    for (name, pid) in cluster.component_pids() {
        let cpu =
            procstat::cpu_seconds(pid).unwrap_or(0.0) - p.cpu0.get(&pid).copied().unwrap_or(0.0);
        let rss = procstat::peak_rss_mib(pid).unwrap_or(0.0);
        match name.as_str() {
            "nats-server" => nats = cpu,
            "manager" => mgr = cpu,
            "gateway" => gw = cpu,
            _ => {
                servers += cpu;
                servers_rss = servers_rss.max(rss);
            }
        }
        comps.insert(
            name,
            json!({"pid": pid, "cpu_s": round3(cpu), "peak_rss_mib": round3(rss)}),
        );
    }
    let client = procstat::self_cpu_seconds() - p.client0;
    let client_rss = procstat::self_peak_rss_mib();
    let total = nats + mgr + gw + servers + client;
    let wall = elapsed.as_secs_f64().max(1e-9);
    let line = format!(
        "    CPU s: bench {client:.2} | gateway {gw:.2} | shard-servers {servers:.2} | nats {nats:.2} | manager {mgr:.2} \
         = {total:.2} of {:.2} core-s ({:.0}% of {} cores)",
        wall * cores() as f64,
        100.0 * total / (wall * cores() as f64),
        cores()
    );
    (
        json!({
            "client": {"cpu_s": round3(client), "peak_rss_mib": round3(client_rss)},
            "components": comps,
            "totals_cpu_s": {"bench_client": round3(client), "gateway": round3(gw),
                              "shard_servers": round3(servers), "nats_server": round3(nats),
                              "manager": round3(mgr), "all": round3(total)},
            "shard_server_max_peak_rss_mib": round3(servers_rss),
            "cores": cores(),
        }),
        line,
    )
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
