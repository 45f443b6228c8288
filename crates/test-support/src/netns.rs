//! Simulated hosts on one machine: a network namespace per host, each with a veth pair on one
//! bridge in the root namespace, and network faults applied with nftables inside a host's
//! namespace. Everything is removed by guards on drop (also when a test panics); namespaces
//! left by a process that died are removed by the next [`Net::create`].
//!
//! Faults (each a [`Fault`] guard; dropping it removes its rules):
//! - [`Net::vanish`]: the host drops every packet in and out, no reset: a host that is gone;
//! - [`Net::drop_link`]: packets from one host to another are dropped (one direction);
//! - [`Net::reject`]: TCP connections from one host to a port of another are reset (refused).
//!
//! Processes run in a host with [`Net::command`] (`ip netns exec`); in-process code can enter a
//! host on a thread of its own with [`Net::enter`].

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// Namespaces and links this module makes start with this, then `<pid>x<k>` (interface names
/// have at most 15 characters).
const PREFIX: &str = "ph";

/// Each `Net` of a process gets its own number `k` (its names and subnet `10.200.k.0/24`;
/// nets never route to each other, each has its own bridge and the root namespace no address).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace (`ip netns` name).
    pub ns: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
}

impl Host {
    /// Moves the calling thread into this host's network namespace (sockets it opens from now
    /// on live there). Use it on a thread of its own.
    pub fn enter(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.ns);
        let f = File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter the network namespace {path}"))?;
        Ok(())
    }

    /// Runs `f` to completion on a thread of its own inside this host (a tokio runtime of that
    /// thread; the processes it spawns live in the host too).
    pub fn block_on<F, Fut, T>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
        T: Send + 'static,
    {
        let host = self.clone();
        std::thread::spawn(move || {
            host.enter()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a runtime for the simulated host")?;
            rt.block_on(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in host {} panicked", self.ns))?
    }
}

/// A set of hosts on one bridge. Dropping it removes the namespaces and the bridge.
#[derive(Debug)]
pub struct Net {
    tag: String,
    hosts: Vec<Host>,
    /// The network namespace the bridge lives in (the creator's): the guard removes it from
    /// there, whichever namespace the thread dropping the `Net` is in.
    home: std::sync::Arc<File>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this machine can make namespaces (root, iproute2 and nftables present).
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("network namespaces need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "`{tool}` not found (cargo xtask install-deps installs iproute2 and nftables)"
            ));
        }
    }
    Ok(())
}

impl Net {
    /// `n` hosts named `h1`..`hN` on a fresh bridge.
    pub fn create(n: usize) -> anyhow::Result<Net> {
        available().map_err(anyhow::Error::msg)?;
        sweep_dead();
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        if k > 99 || n > 99 {
            bail!("too many simulated networks or hosts in one process");
        }
        let tag = format!("{PREFIX}{pid}x{k}");
        let bridge = format!("{tag}br");
        let subnet = (200u32, k as u8);
        let home = File::open("/proc/thread-self/ns/net")
            .context("open this thread's network namespace")?;
        let mut net = Net {
            tag: tag.clone(),
            hosts: Vec::new(),
            home: std::sync::Arc::new(home),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 1..=n {
            let ns = format!("{tag}h{i}");
            let addr = Ipv4Addr::new(10, subnet.0 as u8, subnet.1, i as u8);
            let outer = format!("{tag}v{i}");
            ip(&["netns", "add", &ns])?;
            net.hosts.push(Host {
                ns: ns.clone(),
                addr,
            });
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i` (1-based, as named).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// `program` to run inside host `i`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(i).ns, program]);
        c
    }

    /// [`Host::enter`] host `i`.
    pub fn enter(&self, i: usize) -> anyhow::Result<()> {
        self.host(i).enter()
    }

    /// Host `i` vanishes: every packet in or out is dropped (no reset, no ICMP), loopback
    /// excepted.
    pub fn vanish(&self, i: usize) -> anyhow::Result<Fault> {
        self.fault(
            i,
            "vanish",
            "chain in { type filter hook input priority 0; policy drop; iif lo accept; }\n\
             chain out { type filter hook output priority 0; policy drop; oif lo accept; }",
        )
    }

    /// Packets from host `from` to host `to` are dropped (the other direction still works).
    pub fn drop_link(&self, from: usize, to: usize) -> anyhow::Result<Fault> {
        let dst = self.host(to).addr;
        self.fault(
            from,
            &format!("drop{to}"),
            &format!("chain out {{ type filter hook output priority 0; ip daddr {dst} drop; }}"),
        )
    }

    /// Host `i` and each of `others` no longer reach each other (both directions dropped in
    /// host `i`; the other hosts still reach one another).
    pub fn cut(&self, i: usize, others: &[usize]) -> anyhow::Result<Fault> {
        let set: Vec<String> = others
            .iter()
            .map(|&o| self.host(o).addr.to_string())
            .collect();
        let set = set.join(", ");
        let name: String = others.iter().map(|o| o.to_string()).collect();
        self.fault(
            i,
            &format!("cut{name}"),
            &format!(
                "chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n\
                 chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}"
            ),
        )
    }

    /// TCP connections from host `from` to any of `ports` on host `to` are refused with a reset.
    pub fn reject_ports(&self, from: usize, to: usize, ports: &[u16]) -> anyhow::Result<Fault> {
        let dst = self.host(to).addr;
        let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        self.fault(
            from,
            &format!("rej{to}p{}", list.join("_")),
            &format!(
                "chain out {{ type filter hook output priority 0; \
                 ip daddr {dst} tcp dport {{ {} }} reject with tcp reset; }}",
                list.join(", ")
            ),
        )
    }

    /// TCP connections from host `from` to `port` on host `to` are refused with a reset.
    pub fn reject(&self, from: usize, to: usize, port: u16) -> anyhow::Result<Fault> {
        let dst = self.host(to).addr;
        self.fault(
            from,
            &format!("rej{to}p{port}"),
            &format!(
                "chain out {{ type filter hook output priority 0; \
                 ip daddr {dst} tcp dport {port} reject with tcp reset; }}"
            ),
        )
    }

    fn fault(&self, i: usize, name: &str, chains: &str) -> anyhow::Result<Fault> {
        let ns = self.host(i).ns.clone();
        let table = format!("pgha_{name}");
        let script = format!("table inet {table} {{\n{chains}\n}}\n");
        nft(&ns, &script).with_context(|| format!("fault {name} on {ns}"))?;
        Ok(Fault { ns, table })
    }
}

fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("write the nft script")?;
    }
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An applied network fault; dropping it removes it.
#[derive(Debug)]
#[must_use = "the fault is removed when this guard is dropped"]
pub struct Fault {
    ns: String,
    table: String,
}

impl Fault {
    /// Removes the fault now.
    pub fn heal(self) {}
}

impl Drop for Fault {
    fn drop(&mut self) {
        if let Err(e) = nft(&self.ns, &format!("delete table inet {}\n", self.table)) {
            tracing::error!(ns = %self.ns, table = %self.table, "could not remove a network fault: {e:#}");
        }
    }
}

impl Net {
    /// A handle that removes these hosts (and kills what runs in them) from anywhere.
    pub fn teardown(&self) -> Teardown {
        Teardown {
            tag: self.tag.clone(),
            home: self.home.clone(),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown().run();
    }
}

/// Removes every namespace and link whose name starts with `tag` (a `Net`'s own), after
/// killing every process still running in those namespaces (left by a run that was killed).
fn remove(tag: &str) {
    for ns in list_netns() {
        if ns.starts_with(tag) {
            kill_inside(&ns);
            // Deleting the namespace deletes its end of the veth, and with it the other end.
            if let Err(e) = ip(&["netns", "del", &ns]) {
                tracing::error!("remove network namespace {ns}: {e:#}");
            }
        }
    }
    // A namespace that something still holds (a socket in TIME_WAIT) outlives its name, and
    // the root end of its veth with it: remove those ends by name.
    for link in list_links() {
        if link.starts_with(&format!("{tag}v")) {
            if let Err(e) = ip(&["link", "del", &link]) {
                tracing::debug!("remove veth {link}: {e:#}");
            }
        }
    }
    let br = format!("{tag}br");
    if std::path::Path::new("/sys/class/net").join(&br).exists() {
        if let Err(e) = ip(&["link", "del", &br]) {
            tracing::error!("remove bridge {br}: {e:#}");
        }
    }
}

/// SIGKILL to every process in namespace `ns`.
fn kill_inside(ns: &str) {
    let out = match Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("list the processes of {ns}: {e}");
            return;
        }
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        // Gone meanwhile: nothing to do.
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
        {
            tracing::warn!("killed process {pid} left in {ns}");
        }
    }
}

/// Removes `tag`'s hosts from any thread (a signal handler's): what the guard of a `Net`
/// does, for a process about to exit without running its guards.
#[derive(Debug, Clone)]
pub struct Teardown {
    tag: String,
    home: std::sync::Arc<File>,
}

impl Teardown {
    pub fn run(&self) {
        let (tag, home) = (self.tag.clone(), self.home.clone());
        let done = std::thread::spawn(move || {
            if let Err(e) = nix::sched::setns(&*home, nix::sched::CloneFlags::CLONE_NEWNET) {
                tracing::error!("enter the namespace the simulated hosts were made in: {e}");
            }
            remove(&tag);
        })
        .join();
        if done.is_err() {
            tracing::error!("removing the simulated hosts {} panicked", self.tag);
        }
    }
}

fn list_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn list_netns() -> Vec<String> {
    match std::fs::read_dir("/run/netns") {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes what processes that are gone left behind (killed before their guards ran).
fn sweep_dead() {
    let mut tags = std::collections::BTreeSet::new();
    let names = list_netns().into_iter().chain(list_links());
    for name in names {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, rest)) = rest.split_once('x') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let k: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tags.insert(format!("{PREFIX}{pid}x{k}"));
        }
    }
    for tag in tags {
        tracing::warn!("removing simulated hosts {tag}* left by a process that is gone");
        remove(&tag);
    }
}
