//! `kata-ipvs`: ipvsadm and conntrack arguments parsed and checked in the shim, then rendered
//! again in one canonical form for the guest (nothing the operator typed reaches the VM as is,
//! and nothing reaches a shell), and the sandbox's rule table, which enforces the limit of
//! [`MAX_RULES`] and "clear before restore" as a whole.
//!
//! Written by hand: no crate parses ipvsadm's command line. The accepted options are those of
//! `network-cli.md` plus `--clear` (a restore needs an empty table) and `--numeric` (`--list`
//! is always numeric: the guest has no resolver to wait for).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Rules per sandbox: services plus real servers.
pub const MAX_RULES: usize = 20_000;

/// ipvsadm's own bound on timeouts: 31 days.
const MAX_TIMEOUT: u32 = 86_400 * 31;

pub const SCHEDULERS: [&str; 10] = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A virtual service: protocol and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualService {
    pub proto: Proto,
    pub addr: SocketAddr,
}

impl fmt::Display for VirtualService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = match self.proto {
            Proto::Tcp => "-t",
            Proto::Udp => "-u",
        };
        write!(f, "{flag} {}", self.addr)
    }
}

/// One checked ipvsadm command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsCommand {
    AddService {
        svc: VirtualService,
        scheduler: Option<&'static str>,
        persistent: Option<u32>,
    },
    EditService {
        svc: VirtualService,
        scheduler: Option<&'static str>,
        persistent: Option<u32>,
    },
    DeleteService {
        svc: VirtualService,
    },
    /// Always NAT (masquerading): `-m`.
    AddServer {
        svc: VirtualService,
        server: SocketAddr,
        weight: Option<u32>,
    },
    EditServer {
        svc: VirtualService,
        server: SocketAddr,
        weight: Option<u32>,
    },
    DeleteServer {
        svc: VirtualService,
        server: SocketAddr,
    },
    List,
    Set {
        tcp: u32,
        tcpfin: u32,
        udp: u32,
    },
    Clear,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpvsError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Rule(String),
    #[error("{would} rules would exceed the limit of {MAX_RULES} per sandbox; nothing was changed")]
    Limit { would: usize },
    #[error("the sandbox holds {0} rules: clear them first (--clear); nothing was restored")]
    NotEmpty(usize),
    #[error("rule file line {line}")]
    Line {
        line: usize,
        #[source]
        source: Box<IpvsError>,
    },
}

fn syntax(msg: impl Into<String>) -> IpvsError {
    IpvsError::Syntax(msg.into())
}

/// Options as written, mapped to one canonical name.
fn option_name(arg: &str) -> Option<&'static str> {
    Some(match arg {
        "-A" | "--add-service" => "--add-service",
        "-E" | "--edit-service" => "--edit-service",
        "-D" | "--delete-service" => "--delete-service",
        "-a" | "--add-server" => "--add-server",
        "-e" | "--edit-server" => "--edit-server",
        "-d" | "--delete-server" => "--delete-server",
        "-L" | "-l" | "--list" => "--list",
        "--set" => "--set",
        "-C" | "--clear" => "--clear",
        "-t" | "--tcp-service" => "--tcp-service",
        "-u" | "--udp-service" => "--udp-service",
        "-s" | "--scheduler" => "--scheduler",
        "-p" | "--persistent" => "--persistent",
        "-r" | "--real-server" => "--real-server",
        "-w" | "--weight" => "--weight",
        "-m" | "--masquerading" => "--masquerading",
        "-n" | "--numeric" => "--numeric",
        _ => return None,
    })
}

const COMMANDS: [&str; 9] = [
    "--add-service",
    "--edit-service",
    "--delete-service",
    "--add-server",
    "--edit-server",
    "--delete-server",
    "--list",
    "--set",
    "--clear",
];

fn number(option: &str, v: &str, range: std::ops::RangeInclusive<u32>) -> Result<u32, IpvsError> {
    // Digits only: `parse` alone would take a sign ("+5").
    match v.parse::<u32>() {
        Ok(n) if range.contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(syntax(format!("{option}: {v:?} is not a number in {}..={}", range.start(), range.end()))),
    }
}

/// `ip:port` or `[ipv6]:port`, a unicast address and a port in 1..=65535.
fn endpoint(option: &str, v: &str) -> Result<SocketAddr, IpvsError> {
    let bad = |why: &str| syntax(format!("{option}: {v:?} {why}"));
    let a: SocketAddr = v.parse().map_err(|_| bad("is not ip:port (or [ipv6]:port)"))?;
    if a.port() == 0 {
        return Err(bad("has port 0"));
    }
    let ip = a.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(bad("is not a unicast address"));
    }
    Ok(a)
}

/// The words of one command, options mapped and values attached.
struct Parsed {
    command: &'static str,
    opts: BTreeMap<&'static str, Vec<String>>,
}

/// Longer than most: one loop over the words, a state machine over ipvsadm's grammar (a command,
/// options with and without values, their long and short names); its states are its locals.
fn split(words: &[&str]) -> Result<Parsed, IpvsError> {
    let mut command = None;
    let mut opts: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        i += 1;
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (word, None),
        };
        let opt = option_name(name).ok_or_else(|| {
            if word.starts_with('-') {
                syntax(format!("option {word:?} is not allowed"))
            } else {
                syntax(format!("unexpected argument {word:?}"))
            }
        })?;
        if opts.contains_key(opt) || command == Some(opt) {
            return Err(syntax(format!("{opt} is given twice")));
        }
        let mut values = Vec::new();
        let takes = match opt {
            "--set" => 3,
            "--tcp-service" | "--udp-service" | "--scheduler" | "--real-server" | "--weight" => 1,
            _ => 0,
        };
        if let Some(v) = inline {
            if takes != 1 && opt != "--persistent" {
                return Err(syntax(format!("{opt} takes no value like that")));
            }
            values.push(v);
        } else {
            for _ in 0..takes {
                let v = words.get(i).ok_or_else(|| syntax(format!("{opt} needs a value")))?;
                values.push((*v).to_owned());
                i += 1;
            }
            // `--persistent` takes an optional timeout.
            if opt == "--persistent" {
                if let Some(v) = words.get(i).filter(|v| v.bytes().all(|b| b.is_ascii_digit())) {
                    values.push((*v).to_owned());
                    i += 1;
                }
            }
        }
        if COMMANDS.contains(&opt) {
            if let Some(c) = command {
                return Err(syntax(format!("one command at a time: {c} and {opt}")));
            }
            command = Some(opt);
            if !values.is_empty() {
                opts.insert(opt, values);
            }
        } else {
            opts.insert(opt, values);
        }
    }
    let command = command.ok_or_else(|| syntax(format!("no command (one of {})", COMMANDS.join(", "))))?;
    Ok(Parsed { command, opts })
}

impl Parsed {
    fn only(&self, allowed: &[&str]) -> Result<(), IpvsError> {
        for o in self.opts.keys() {
            if *o != self.command && !allowed.contains(o) {
                return Err(syntax(format!("{o} does not apply to {}", self.command)));
            }
        }
        Ok(())
    }

    fn value(&self, o: &str) -> Option<&str> {
        self.opts.get(o).and_then(|v| v.first()).map(String::as_str)
    }

    fn service(&self) -> Result<VirtualService, IpvsError> {
        match (self.value("--tcp-service"), self.value("--udp-service")) {
            (Some(_), Some(_)) => Err(syntax("give --tcp-service or --udp-service, not both")),
            (Some(v), None) => Ok(VirtualService { proto: Proto::Tcp, addr: endpoint("--tcp-service", v)? }),
            (None, Some(v)) => Ok(VirtualService { proto: Proto::Udp, addr: endpoint("--udp-service", v)? }),
            (None, None) => Err(syntax(format!("{} needs --tcp-service or --udp-service", self.command))),
        }
    }

    fn server(&self, svc: &VirtualService) -> Result<SocketAddr, IpvsError> {
        let v = self.value("--real-server").ok_or_else(|| syntax(format!("{} needs --real-server", self.command)))?;
        let a = endpoint("--real-server", v)?;
        if a.is_ipv6() != svc.addr.is_ipv6() {
            return Err(syntax(format!("--real-server: {a} is not of the service's address family")));
        }
        Ok(a)
    }

    fn scheduler(&self) -> Result<Option<&'static str>, IpvsError> {
        self.value("--scheduler")
            .map(|s| {
                SCHEDULERS
                    .iter()
                    .find(|k| **k == s)
                    .copied()
                    .ok_or_else(|| syntax(format!("--scheduler: {s:?} is not one of {}", SCHEDULERS.join(", "))))
            })
            .transpose()
    }

    fn persistent(&self) -> Result<Option<u32>, IpvsError> {
        match self.opts.get("--persistent") {
            None => Ok(None),
            // ipvsadm's default persistence timeout.
            Some(v) if v.is_empty() => Ok(Some(300)),
            Some(v) => number("--persistent", &v[0], 1..=MAX_TIMEOUT).map(Some),
        }
    }

    fn weight(&self) -> Result<Option<u32>, IpvsError> {
        self.value("--weight").map(|w| number("--weight", w, 0..=65_535)).transpose()
    }
}

impl IpvsCommand {
    /// Parse `--parameters`: one ipvsadm command. A real server is always added in NAT mode.
    pub fn parse(parameters: &str) -> Result<Self, IpvsError> {
        let words: Vec<&str> = parameters.split_whitespace().collect();
        let p = split(&words)?;
        Self::from_parsed(&p)
    }

    fn from_parsed(p: &Parsed) -> Result<Self, IpvsError> {
        const SVC: [&str; 2] = ["--tcp-service", "--udp-service"];
        Ok(match p.command {
            "--add-service" | "--edit-service" => {
                p.only(&[SVC[0], SVC[1], "--scheduler", "--persistent"])?;
                let (svc, scheduler, persistent) = (p.service()?, p.scheduler()?, p.persistent()?);
                if p.command == "--add-service" {
                    IpvsCommand::AddService { svc, scheduler, persistent }
                } else {
                    IpvsCommand::EditService { svc, scheduler, persistent }
                }
            }
            "--delete-service" => {
                p.only(&SVC)?;
                IpvsCommand::DeleteService { svc: p.service()? }
            }
            "--add-server" | "--edit-server" => {
                p.only(&[SVC[0], SVC[1], "--real-server", "--weight", "--masquerading"])?;
                let svc = p.service()?;
                let (server, weight) = (p.server(&svc)?, p.weight()?);
                if p.command == "--add-server" {
                    IpvsCommand::AddServer { svc, server, weight }
                } else {
                    IpvsCommand::EditServer { svc, server, weight }
                }
            }
            "--delete-server" => {
                p.only(&[SVC[0], SVC[1], "--real-server"])?;
                let svc = p.service()?;
                IpvsCommand::DeleteServer { svc, server: p.server(&svc)? }
            }
            "--list" => {
                p.only(&["--numeric"])?;
                IpvsCommand::List
            }
            "--set" => {
                p.only(&[])?;
                let v = &p.opts["--set"];
                let t = |i: usize, what: &str| number(&format!("--set {what}"), &v[i], 0..=MAX_TIMEOUT);
                IpvsCommand::Set { tcp: t(0, "tcp")?, tcpfin: t(1, "tcpfin")?, udp: t(2, "udp")? }
            }
            "--clear" => {
                p.only(&[])?;
                IpvsCommand::Clear
            }
            other => return Err(syntax(format!("{other} is not a command"))),
        })
    }

    /// The arguments sent to the guest's ipvsadm, in short form (that of `ipvsadm --save`).
    pub fn args(&self) -> String {
        let sched = |s: &Option<&str>, p: &Option<u32>| {
            let mut out = String::new();
            if let Some(s) = s {
                out.push_str(&format!(" -s {s}"));
            }
            if let Some(p) = p {
                out.push_str(&format!(" -p {p}"));
            }
            out
        };
        let weight = |w: &Option<u32>| w.map(|w| format!(" -w {w}")).unwrap_or_default();
        match self {
            IpvsCommand::AddService { svc, scheduler, persistent } => {
                format!("-A {svc}{}", sched(scheduler, persistent))
            }
            IpvsCommand::EditService { svc, scheduler, persistent } => {
                format!("-E {svc}{}", sched(scheduler, persistent))
            }
            IpvsCommand::DeleteService { svc } => format!("-D {svc}"),
            IpvsCommand::AddServer { svc, server, weight: w } => format!("-a {svc} -r {server}{} -m", weight(w)),
            IpvsCommand::EditServer { svc, server, weight: w } => format!("-e {svc} -r {server}{} -m", weight(w)),
            IpvsCommand::DeleteServer { svc, server } => format!("-d {svc} -r {server}"),
            IpvsCommand::List => "-L -n".to_owned(),
            IpvsCommand::Set { tcp, tcpfin, udp } => format!("--set {tcp} {tcpfin} {udp}"),
            IpvsCommand::Clear => "-C".to_owned(),
        }
    }

    /// The request for the agent's `UpdateIPVSRule`.
    pub fn request(&self) -> String {
        format!("ipvsadm {}", self.args())
    }
}

/// A checked rule file: the `-A`/`-a` lines of `ipvsadm --save`, rendered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub table: IpvsTable,
    pub lines: Vec<IpvsCommand>,
}

impl Restore {
    /// Parse a rule file. Only `-A` and `-a` lines (blank lines and `#` comments skipped); a
    /// real server must say `-m` (NAT), the only forwarding method; at most [`MAX_RULES`].
    pub fn parse(text: &str) -> Result<Self, IpvsError> {
        let mut table = IpvsTable::default();
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_err = |source: IpvsError| IpvsError::Line { line: n + 1, source: Box::new(source) };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let p = split(&words).map_err(line_err)?;
            if !matches!(p.command, "--add-service" | "--add-server") {
                return Err(line_err(syntax(format!("{} in a rule file: only -A and -a lines", p.command))));
            }
            if p.command == "--add-server" && !p.opts.contains_key("--masquerading") {
                return Err(line_err(syntax("a real server needs -m (NAT), the only forwarding method")));
            }
            let cmd = IpvsCommand::from_parsed(&p).map_err(line_err)?;
            if table.rules() >= MAX_RULES {
                return Err(IpvsError::Limit { would: table.rules() + 1 + count_rest(text, n + 1) });
            }
            table.check(&cmd).map_err(line_err)?;
            table.apply(&cmd);
            lines.push(cmd);
        }
        Ok(Self { table, lines })
    }

    /// The request for the agent: `restore|<count>|<rules>`.
    pub fn request(&self) -> String {
        let mut out = format!("restore|{}|", self.lines.len());
        for l in &self.lines {
            out.push_str(&l.args());
            out.push('\n');
        }
        out
    }
}

/// Rule lines after line `from` (0-based), for the limit message.
fn count_rest(text: &str, from: usize) -> usize {
    text.lines().skip(from).filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#')).count()
}

/// The sandbox's IPVS rules as the shim knows them: services and their real servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsTable {
    services: BTreeMap<VirtualService, BTreeSet<SocketAddr>>,
    /// Services plus real servers, kept as they change.
    rules: usize,
}

impl IpvsTable {
    /// Services plus real servers.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// Would `cmd` succeed on this table, within the limit?
    pub fn check(&self, cmd: &IpvsCommand) -> Result<(), IpvsError> {
        let rule = |m: String| Err(IpvsError::Rule(m));
        let have = |svc: &VirtualService| self.services.get(svc);
        match cmd {
            IpvsCommand::AddService { svc, .. } => {
                if have(svc).is_some() {
                    return rule(format!("service {svc} exists"));
                }
                self.room_for(1)
            }
            IpvsCommand::EditService { svc, .. } | IpvsCommand::DeleteService { svc } => match have(svc) {
                None => rule(format!("no service {svc}")),
                Some(_) => Ok(()),
            },
            IpvsCommand::AddServer { svc, server, .. } => match have(svc) {
                None => rule(format!("no service {svc}")),
                Some(s) if s.contains(server) => rule(format!("real server {server} of {svc} exists")),
                Some(_) => self.room_for(1),
            },
            IpvsCommand::EditServer { svc, server, .. } | IpvsCommand::DeleteServer { svc, server } => {
                match have(svc) {
                    None => rule(format!("no service {svc}")),
                    Some(s) if !s.contains(server) => rule(format!("no real server {server} in {svc}")),
                    Some(_) => Ok(()),
                }
            }
            IpvsCommand::List | IpvsCommand::Set { .. } | IpvsCommand::Clear => Ok(()),
        }
    }

    fn room_for(&self, n: usize) -> Result<(), IpvsError> {
        let would = self.rules() + n;
        if would > MAX_RULES {
            return Err(IpvsError::Limit { would });
        }
        Ok(())
    }

    /// Record a command the guest carried out.
    pub fn apply(&mut self, cmd: &IpvsCommand) {
        match cmd {
            IpvsCommand::AddService { svc, .. } => {
                if !self.services.contains_key(svc) {
                    self.services.insert(*svc, BTreeSet::new());
                    self.rules += 1;
                }
            }
            IpvsCommand::DeleteService { svc } => {
                if let Some(servers) = self.services.remove(svc) {
                    self.rules -= 1 + servers.len();
                }
            }
            IpvsCommand::AddServer { svc, server, .. } => {
                if let Some(s) = self.services.get_mut(svc) {
                    if s.insert(*server) {
                        self.rules += 1;
                    }
                }
            }
            IpvsCommand::DeleteServer { svc, server } => {
                if self.services.get_mut(svc).is_some_and(|s| s.remove(server)) {
                    self.rules -= 1;
                }
            }
            IpvsCommand::Clear => {
                self.services.clear();
                self.rules = 0;
            }
            IpvsCommand::EditService { .. }
            | IpvsCommand::EditServer { .. }
            | IpvsCommand::List
            | IpvsCommand::Set { .. } => {}
        }
    }
}

/// `cleanup --parameters "--orig-dst <ip> --protonum tcp|udp"`: the conntrack request.
pub fn cleanup_request(parameters: &str) -> Result<String, IpvsError> {
    let words: Vec<&str> = parameters.split_whitespace().collect();
    let (mut dst, mut proto) = (None, None);
    let mut i = 0;
    while i < words.len() {
        let (name, inline) = match words[i].split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (words[i], None),
        };
        i += 1;
        if !matches!(name, "--orig-dst" | "--protonum") {
            return Err(syntax(format!("option {name:?} is not allowed (--orig-dst, --protonum)")));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = words.get(i).copied();
                i += 1;
                v.ok_or_else(|| syntax(format!("{name} needs a value")))?
            }
        };
        match name {
            "--orig-dst" if dst.is_none() => {
                let ip: IpAddr =
                    value.parse().map_err(|_| syntax(format!("--orig-dst: {value:?} is not an IP address")))?;
                dst = Some(ip);
            }
            "--protonum" if proto.is_none() => {
                proto = Some(match value {
                    "tcp" | "6" => "tcp",
                    "udp" | "17" => "udp",
                    _ => return Err(syntax(format!("--protonum: {value:?} is not tcp or udp"))),
                });
            }
            _ => return Err(syntax(format!("{name} is given twice"))),
        }
    }
    let dst = dst.ok_or_else(|| syntax("--orig-dst is required"))?;
    let proto = proto.ok_or_else(|| syntax("--protonum is required"))?;
    Ok(format!("conntrack -D --orig-dst {dst} --protonum {proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<IpvsCommand, IpvsError> {
        IpvsCommand::parse(s)
    }

    #[test]
    fn the_manuals_commands_parse_and_render_in_short_form() {
        let cases = [
            (
                "--add-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 3000",
                "-A -t 172.17.0.7:80 -s rr -p 3000",
            ),
            (
                "--edit-service --tcp-service 172.17.0.7:80 --scheduler rr --persistent 5000",
                "-E -t 172.17.0.7:80 -s rr -p 5000",
            ),
            ("--delete-service --tcp-service 172.17.0.7:80", "-D -t 172.17.0.7:80"),
            (
                "--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 100",
                "-a -t 172.17.0.7:80 -r 172.17.0.4:80 -w 100 -m",
            ),
            (
                "--edit-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 200",
                "-e -t 172.17.0.7:80 -r 172.17.0.4:80 -w 200 -m",
            ),
            (
                "--delete-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80",
                "-d -t 172.17.0.7:80 -r 172.17.0.4:80",
            ),
            ("--list", "-L -n"),
            ("--set 100 100 200", "--set 100 100 200"),
            ("--add-service --udp-service [fd00::7]:53 -s wlc", "-A -u [fd00::7]:53 -s wlc"),
            ("-A -t 10.0.0.1:80 -p", "-A -t 10.0.0.1:80 -p 300"),
            ("--add-service --tcp-service=10.0.0.1:80 --scheduler=sh", "-A -t 10.0.0.1:80 -s sh"),
            ("--clear", "-C"),
        ];
        for (input, out) in cases {
            assert_eq!(parse(input).unwrap().args(), out, "{input}");
        }
    }

    #[test]
    fn what_is_not_allowed_is_refused_with_a_reason() {
        let cases = [
            ("", "no command"),
            ("--add-service --tcp-service 172.17.0.7:80 --scheduler rrr", "--scheduler"),
            ("--add-service --tcp-service 172.17.0.7:99999", "--tcp-service"),
            ("--add-service --tcp-service 172.17.0.7:0", "port 0"),
            ("--add-service --tcp-service 0.0.0.0:80", "unicast"),
            ("--add-service --tcp-service 172.17.0.7", "ip:port"),
            ("--add-service --fwmark-service 1", "not allowed"),
            ("--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --gatewaying", "not allowed"),
            ("--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight 70000", "--weight"),
            ("--add-server --tcp-service 172.17.0.7:80 --real-server 172.17.0.4:80 --weight +5", "--weight"),
            ("--add-server --tcp-service 172.17.0.7:80 --real-server [fd00::4]:80", "family"),
            ("--add-server --tcp-service 172.17.0.7:80", "needs --real-server"),
            ("--add-service --tcp-service 172.17.0.7:80 --weight 1", "does not apply"),
            ("--add-service --delete-service --tcp-service 172.17.0.7:80", "one command at a time"),
            ("--add-service --tcp-service 1.2.3.4:80 --tcp-service 1.2.3.5:80", "twice"),
            ("--add-service --tcp-service 1.2.3.4:80 --persistent 0", "--persistent"),
            ("--set 100 100", "needs a value"),
            ("--set 100 100 x", "--set udp"),
            ("--list; reboot", "not allowed"),
            ("--list $(reboot)", "unexpected argument"),
            ("--add-service --tcp-service 172.17.0.7:80`id`", "--tcp-service"),
            ("--add-service --tcp-service 172.17.0.7:80 --scheduler rr|sh", "--scheduler"),
            ("--list && rm -rf /", "unexpected argument"),
            ("--restore", "not allowed"),
        ];
        for (input, why) in cases {
            let e = parse(input).unwrap_err().to_string();
            assert!(e.contains(why), "{input:?}: {e}");
        }
    }

    #[test]
    fn the_table_counts_services_and_servers_and_holds_the_limit() {
        let mut t = IpvsTable::default();
        let run = |t: &mut IpvsTable, s: &str| {
            let c = parse(s).unwrap();
            t.check(&c)?;
            t.apply(&c);
            Ok::<_, IpvsError>(t.rules())
        };
        assert_eq!(run(&mut t, "-A -t 10.0.0.1:80 -s rr"), Ok(1));
        assert_eq!(run(&mut t, "-a -t 10.0.0.1:80 -r 10.0.1.1:80"), Ok(2));
        assert_eq!(run(&mut t, "-a -t 10.0.0.1:80 -r 10.0.1.2:80"), Ok(3));
        assert!(matches!(run(&mut t, "-a -t 10.0.0.1:80 -r 10.0.1.2:80"), Err(IpvsError::Rule(_))));
        assert!(matches!(run(&mut t, "-A -t 10.0.0.1:80"), Err(IpvsError::Rule(_))));
        assert!(matches!(run(&mut t, "-a -t 10.0.0.2:80 -r 10.0.1.2:80"), Err(IpvsError::Rule(_))));
        assert_eq!(run(&mut t, "-d -t 10.0.0.1:80 -r 10.0.1.2:80"), Ok(2));
        assert_eq!(run(&mut t, "-D -t 10.0.0.1:80"), Ok(0), "deleting a service takes its servers");
        assert_eq!(run(&mut t, "-A -t 10.0.0.1:80"), Ok(1));
        assert_eq!(run(&mut t, "-C"), Ok(0));
    }

    fn rule_file(services: usize, servers: usize) -> String {
        let mut s = String::new();
        for i in 0..services {
            let vip = format!("10.{}.{}.1:80", i / 250, i % 250);
            s.push_str(&format!("-A -t {vip} -s rr -p  3000\n"));
            for j in 0..servers {
                s.push_str(&format!("-a -t {vip} -r  172.16.{}.{}:{} -m\n", j, 1 + i % 250, 80 + j));
            }
        }
        s
    }

    #[test]
    fn restore_takes_the_manuals_file_and_holds_the_limit_as_a_whole() {
        let manual = "-A -t 10.10.11.12:100 -s rr -p  3000\n-a -t 10.10.11.12:100 -r  172.16.0.1:80 -m\n\
                      -a -t 10.10.11.12:100 -r  172.16.0.1:81 -m\n-a -t 10.10.11.12:100 -r 172.16.0.1:82  -m\n";
        let r = Restore::parse(manual).unwrap();
        assert_eq!(r.table.rules(), 4);
        assert_eq!(
            r.request(),
            "restore|4|-A -t 10.10.11.12:100 -s rr -p 3000\n-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m\n\
             -a -t 10.10.11.12:100 -r 172.16.0.1:81 -m\n-a -t 10.10.11.12:100 -r 172.16.0.1:82 -m\n"
        );
        let full = rule_file(5000, 3);
        assert_eq!(Restore::parse(&full).unwrap().table.rules(), MAX_RULES);
        let over = format!("{full}-A -t 10.250.0.1:80 -s rr\n");
        assert_eq!(Restore::parse(&over), Err(IpvsError::Limit { would: MAX_RULES + 1 }));
        let bad = [
            ("-a -t 10.10.11.12:100 -r 172.16.0.1:80 -m\n", "line 1: no service"),
            ("-A -t 10.10.11.12:100\n-a -t 10.10.11.12:100 -r 172.16.0.1:80\n", "line 2: a real server needs -m"),
            ("-A -t 10.10.11.12:100\n-D -t 10.10.11.12:100\n", "line 2: --delete-service in a rule file"),
            ("-A -t 10.10.11.12:100 ; reboot\n", "line 1: unexpected argument \";\""),
        ];
        for (text, why) in bad {
            let e = Restore::parse(text).unwrap_err();
            // The line, then its cause (said once: the line's own message does not repeat it).
            let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
            let e = format!("{e}: {cause}");
            assert!(e.contains(why) && !e.contains(&format!("{cause}: {cause}")), "{text:?}: {e}");
        }
    }

    #[test]
    fn cleanup_parameters() {
        assert_eq!(
            cleanup_request("--orig-dst 172.17.0.4 --protonum tcp").unwrap(),
            "conntrack -D --orig-dst 172.17.0.4 --protonum tcp"
        );
        assert_eq!(
            cleanup_request("--protonum=udp --orig-dst=fd00::4").unwrap(),
            "conntrack -D --orig-dst fd00::4 --protonum udp"
        );
        for (bad, why) in [
            ("--orig-dst 172.17.0.4", "--protonum is required"),
            ("--orig-dst 172.17.0.400 --protonum tcp", "--orig-dst"),
            ("--orig-dst 172.17.0.4 --protonum icmp", "--protonum"),
            ("--orig-dst 172.17.0.4 --protonum tcp --flush", "not allowed"),
            ("--orig-dst 172.17.0.4;reboot --protonum tcp", "--orig-dst"),
        ] {
            let e = cleanup_request(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
