//! The nemesis's faults, each a function over containers of a [`DockerCluster`]:
//! link partitions (iptables rules inside one container's network namespace, entered from
//! the host with `nsenter`, since the images have no shell, alone or as a split of the NATS
//! cluster into two sides; or `docker network disconnect`
//! where iptables cannot be used), kill -9, pause, and extra manager containers (a second
//! manager, or one started with a failpoint).
//!
//! Every fault returns a guard that heals it when dropped, so a failing test leaves no
//! container paused or cut off before the cluster itself is removed.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::docker::{docker, DockerCluster, LABEL_PROJECT};

fn out(args: &[&str]) -> Result<String, String> {
    let o = docker(args);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The network the cluster's containers share.
pub fn network(c: &DockerCluster) -> String {
    format!("{}-net", c.project())
}

/// A container's address on the cluster network.
pub fn ip(c: &DockerCluster, container: &str) -> Result<String, String> {
    let nets = out(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Networks}}",
        container,
    ])?;
    let nets: Value = serde_json::from_str(&nets).map_err(|e| e.to_string())?;
    nets[network(c)]["IPAddress"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("{container} has no address on {}", network(c)))
}

fn pid(container: &str) -> Result<String, String> {
    let p = out(&["inspect", "--format", "{{.State.Pid}}", container])?;
    if p == "0" || p.is_empty() {
        return Err(format!("{container} is not running"));
    }
    Ok(p)
}

fn nsenter_iptables(pid: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new("nsenter")
        .args(["-t", pid, "-n", "iptables", "-w"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nsenter -t {pid} -n iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Whether link partitions can be made with iptables in `container`'s namespace (the host
/// has `nsenter` and `iptables`, and they work there).
pub fn iptables_usable(container: &str) -> Result<(), String> {
    let p = pid(container)?;
    nsenter_iptables(&p, &["-L", "INPUT", "-n"])
}

/// How a fault is undone.
enum Undo {
    Iptables {
        pid: String,
        peer: String,
    },
    Reconnect {
        network: String,
        container: String,
    },
    Unpause(String),
    Remove(String),
    /// Several faults made as one (a split of the cluster into two sides).
    All(Vec<Fault>),
    Nothing,
}

/// A fault in force; healed by [`Fault::heal`] or on drop.
pub struct Fault {
    pub what: String,
    undo: Undo,
}

impl Fault {
    /// Undoes the fault (idempotent). A container that died meanwhile has nothing to undo.
    pub fn heal(&mut self) -> Result<(), String> {
        let r = match std::mem::replace(&mut self.undo, Undo::Nothing) {
            Undo::Iptables { pid, peer } => {
                nsenter_iptables(&pid, &["-D", "INPUT", "-s", &peer, "-j", "DROP"]).and_then(|_| {
                    nsenter_iptables(&pid, &["-D", "OUTPUT", "-d", &peer, "-j", "DROP"])
                })
            }
            Undo::Reconnect { network, container } => {
                out(&["network", "connect", &network, &container]).map(|_| ())
            }
            Undo::Unpause(c) => out(&["unpause", &c]).map(|_| ()),
            Undo::Remove(c) => out(&["rm", "-f", &c]).map(|_| ()),
            // Every part is healed even when one fails; the first error is reported.
            Undo::All(parts) => parts
                .into_iter()
                .map(|mut f| f.heal())
                .fold(Ok(()), Result::and),
            Undo::Nothing => Ok(()),
        };
        // A namespace gone with its container took its rules with it.
        match r {
            Err(e) if e.contains("is not running") || e.contains("No such") => Ok(()),
            r => r,
        }
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("nemesis: healing {} failed: {e}", self.what);
        }
    }
}

/// Drops every packet between `a` and `b` (both directions), by rules in `a`'s namespace.
pub fn partition(c: &DockerCluster, a: &str, b: &str, label: &str) -> Result<Fault, String> {
    let p = pid(a)?;
    let peer = ip(c, b)?;
    nsenter_iptables(&p, &["-I", "INPUT", "-s", &peer, "-j", "DROP"])?;
    let fault = Fault {
        what: format!("partition {label}"),
        undo: Undo::Iptables {
            pid: p.clone(),
            peer: peer.clone(),
        },
    };
    nsenter_iptables(&p, &["-I", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
    Ok(fault)
}

/// Drops every packet between each container of `a` and each of `b` (rules in the
/// namespaces of `a`'s containers), as one fault described by `what`.
pub fn split(c: &DockerCluster, a: &[String], b: &[String], what: String) -> Result<Fault, String> {
    let mut parts = Vec::new();
    for x in a {
        for y in b {
            // On an error the parts made so far are healed as they are dropped.
            parts.push(partition(c, x, y, &format!("{x}<->{y}"))?);
        }
    }
    Ok(Fault {
        what,
        undo: Undo::All(parts),
    })
}

/// The address of the NATS server `container` has a client connection to (port 4222), read
/// from its network namespace's TCP table: the compose file gives every component
/// `nats://nats:4222` and all three cluster nodes answer to `nats`, so which node a
/// component uses is decided when it connects.
pub fn nats_peer(container: &str) -> Result<Option<String>, String> {
    let p = pid(container)?;
    let table = std::fs::read_to_string(format!("/proc/{p}/net/tcp"))
        .map_err(|e| format!("cannot read {container}'s TCP table: {e}"))?;
    // `sl local_address rem_address st ...`, addresses as little-endian hex `AABBCCDD:PORT`;
    // state 01 is ESTABLISHED.
    Ok(table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (addr, port) = f.get(2)?.split_once(':')?;
        if *f.get(3)? != "01" || u16::from_str_radix(port, 16).ok()? != 4222 {
            return None;
        }
        let a = u32::from_str_radix(addr, 16).ok()?;
        Some(std::net::Ipv4Addr::from(a.to_le_bytes()).to_string())
    }))
}

/// A split of the 3-node NATS cluster around the node `anchor` (a component's container,
/// with its label) is connected to: that node is cut from the other two, both directions.
/// With `with_clients`, every one of `components` connected to that node goes with it to
/// the minority side, cut from the two majority nodes too (so it cannot reconnect to them);
/// without, those clients stay connected to the isolated node. Links between components are
/// left alone: this is a fault of NATS, not of the shardline HTTP links.
pub fn nats_split(
    c: &DockerCluster,
    components: &[(String, String)],
    anchor: &(String, String),
    with_clients: bool,
) -> Result<Fault, String> {
    let mut nodes = Vec::new();
    for (service, label) in [
        ("nats", "nats-1"),
        ("nats-2", "nats-2"),
        ("nats-3", "nats-3"),
    ] {
        let container = c
            .service_container(service)
            .ok_or(format!("no {service} container"))?;
        nodes.push((label, ip(c, &container)?, container));
    }
    let node_of = |container: &str| -> Result<Option<usize>, String> {
        let peer = nats_peer(container)?;
        Ok(nodes.iter().position(|n| Some(&n.1) == peer.as_ref()))
    };
    let m = node_of(&anchor.1)?.ok_or(format!("{} has no NATS connection", anchor.0))?;
    let mut clients = Vec::new();
    for comp in components {
        if node_of(&comp.1)? == Some(m) {
            clients.push(comp);
        }
    }
    let majority: Vec<String> = (0..3)
        .filter(|i| *i != m)
        .map(|i| nodes[i].2.clone())
        .collect();
    let others: Vec<&str> = (0..3).filter(|i| *i != m).map(|i| nodes[i].0).collect();
    let names: Vec<&str> = clients.iter().map(|c| c.0.as_str()).collect();
    let mut minority = vec![nodes[m].2.clone()];
    let what = if with_clients {
        minority.extend(clients.iter().map(|c| c.1.clone()));
        format!(
            "minority {{{}, its clients {}}} cut from majority {{{}}}",
            nodes[m].0,
            names.join(", "),
            others.join(", ")
        )
    } else {
        format!(
            "{} (serving {}) cut from {}",
            nodes[m].0,
            names.join(", "),
            others.join(", ")
        )
    };
    split(c, &minority, &majority, what)
}

/// Cuts `container` off the cluster network entirely (every link of it).
pub fn disconnect(c: &DockerCluster, container: &str, label: &str) -> Result<Fault, String> {
    let net = network(c);
    out(&["network", "disconnect", "-f", &net, container])?;
    Ok(Fault {
        what: format!("disconnect {label}"),
        undo: Undo::Reconnect {
            network: net,
            container: container.to_string(),
        },
    })
}

/// `docker kill -s KILL`: nothing to heal (respawning is the manager's job).
pub fn kill(container: &str, label: &str) -> Result<Fault, String> {
    out(&["kill", "-s", "KILL", container])?;
    Ok(Fault {
        what: format!("kill -9 {label}"),
        undo: Undo::Nothing,
    })
}

/// `docker pause` (the cgroup freezer: SIGSTOP as far as the process can tell).
pub fn pause(container: &str, label: &str) -> Result<Fault, String> {
    out(&["pause", container])?;
    Ok(Fault {
        what: format!("pause {label}"),
        undo: Undo::Unpause(container.to_string()),
    })
}

/// Restarts a container (e.g. a NATS node): stop with a short grace time, start again.
pub fn restart(container: &str, label: &str) -> Result<Fault, String> {
    out(&["restart", "-t", "1", container])?;
    Ok(Fault {
        what: format!("restart {label}"),
        undo: Undo::Nothing,
    })
}

/// Another manager container like the compose one (same image, environment, network and
/// Docker socket, answering to the name `manager` too), plus `extra_env`. Removed on heal.
pub fn extra_manager(
    c: &DockerCluster,
    name: &str,
    extra_env: &[(&str, &str)],
) -> Result<Fault, String> {
    let compose_manager = c
        .service_container("manager")
        .ok_or("no manager container")?;
    let env = out(&[
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &compose_manager,
    ])?;
    let env: Vec<String> = serde_json::from_str(&env).map_err(|e| e.to_string())?;
    let image = out(&["inspect", "--format", "{{.Config.Image}}", &compose_manager])?;
    let container = format!("{}-{name}", c.project());
    let label = format!("{LABEL_PROJECT}={}", c.project());
    let net = network(c);
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &container,
        "--label",
        &label,
        "--network",
        &net,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--network-alias".into(), "manager".into()]);
    // Its API on a host port of loopback, for `/healthz` (the role under a lease).
    args.extend(["-p".into(), "127.0.0.1::5001".into()]);
    args.extend([
        "-v".into(),
        "/var/run/docker.sock:/var/run/docker.sock".into(),
    ]);
    for e in env.iter().filter(|e| !e.starts_with("PATH=")) {
        args.extend(["-e".into(), e.clone()]);
    }
    for (k, v) in extra_env {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.push(image);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    out(&refs)?;
    Ok(Fault {
        what: format!("manager {name}"),
        undo: Undo::Remove(container),
    })
}

/// The host port (on 127.0.0.1) published for a container's `port`.
pub fn host_port(container: &str, port: u16) -> Option<u16> {
    let s = out(&["port", container, &port.to_string()]).ok()?;
    s.lines().next()?.rsplit(':').next()?.trim().parse().ok()
}

/// `(status, exit code)` of a container.
pub fn state(container: &str) -> Option<(String, i64)> {
    let s = out(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        container,
    ])
    .ok()?;
    let (st, code) = s.split_once(' ')?;
    Some((st.to_string(), code.parse().ok()?))
}

/// `docker logs` of a container, last `n` lines (stdout and stderr).
pub fn logs(container: &str, n: usize) -> String {
    let o = docker(&["logs", "--tail", &n.to_string(), container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
