//! OCI's `linux.seccomp` as classic BPF (seccompiler builds the programs), installed by the
//! launcher. seccompiler gives one action on a match and one otherwise per program, so a profile
//! becomes a stack of programs, which the kernel evaluates all, keeping the most restrictive
//! answer: a base program returns the default action for every syscall the profile does not name
//! (allowing those it allows, with their argument conditions, and those another rule names), and
//! each other action gets a program returning it for its syscalls (allowing the rest). Syscalls
//! this architecture lacks are skipped, as libseccomp skips them. Architectures are the guest's
//! (x86_64).

use std::collections::BTreeMap;

use agent_client::protocols::oci::LinuxSeccomp;
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};

include!(concat!(env!("OUT_DIR"), "/syscalls.rs"));

fn number(name: &str) -> Option<i64> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(0)),
        other => return Err(format!("linux.seccomp: action {other:?} is not supported")),
    })
}

fn op(name: &str, value: u64, value_two: u64) -> Result<(SeccompCmpOp, u64), String> {
    Ok(match name {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, value),
        // OCI's value is the mask, valueTwo the datum.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(value), value_two),
        other => return Err(format!("linux.seccomp: operator {other:?} is not supported")),
    })
}

/// Per syscall: `None` matches it whatever its arguments, else any of the rules.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn program(rules: Rules, mismatch: SeccompAction, on_match: SeccompAction) -> Result<Vec<u8>, String> {
    // seccompiler's empty rule list matches a syscall unconditionally.
    let rules = rules.into_iter().map(|(nr, r)| (nr, r.unwrap_or_default())).collect();
    let filter = SeccompFilter::new(rules, mismatch, on_match, seccompiler::TargetArch::x86_64)
        .map_err(|e| format!("linux.seccomp: {e}"))?;
    let prog: seccompiler::BpfProgram = filter.try_into().map_err(|e| format!("linux.seccomp: {e}"))?;
    Ok(prog
        .iter()
        .flat_map(|f| {
            let mut b = Vec::with_capacity(8);
            b.extend_from_slice(&f.code.to_ne_bytes());
            b.push(f.jt);
            b.push(f.jf);
            b.extend_from_slice(&f.k.to_ne_bytes());
            b
        })
        .collect())
}

/// The programs for `profile`, to be installed in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<u8>>, String> {
    let default = action(&profile.DefaultAction, None)?;
    // Rules by action, in the order the profile names them.
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for (i, s) in profile.Syscalls.iter().enumerate() {
        let act = action(&s.Action, s.has_errnoret().then(|| s.errnoret()))?;
        let mut conds = Vec::new();
        for a in &s.Args {
            let (o, v) = op(&a.Op, a.Value, a.ValueTwo)?;
            let index = u8::try_from(a.Index).ok().filter(|i| *i < 6);
            let index =
                index.ok_or_else(|| format!("linux.seccomp.syscalls[{i}].args: index {} is not 0-5", a.Index))?;
            conds.push(SeccompCondition::new(index, SeccompCmpArgLen::Qword, o, v).map_err(|e| e.to_string())?);
        }
        let slot = match by_action.iter_mut().find(|(a, _)| *a == act) {
            Some(s) => s,
            None => {
                by_action.push((act.clone(), Rules::new()));
                by_action.last_mut().expect("pushed")
            }
        };
        for nr in s.Names.iter().filter_map(|n| number(n)) {
            let entry = slot.1.entry(nr).or_insert_with(|| Some(Vec::new()));
            match (conds.is_empty(), entry) {
                // An unconditional rule matches whatever the others say.
                (true, e) => *e = None,
                (false, None) => {}
                (false, Some(rules)) => rules.push(SeccompRule::new(conds.clone()).map_err(|e| e.to_string())?),
            }
        }
    }
    let mut progs = Vec::new();
    // The base: the default for what no rule names; what the allow rules allow (with their
    // conditions); the syscalls of other actions allowed here (their program decides).
    let mut base: Rules =
        by_action.iter().find(|(a, _)| *a == SeccompAction::Allow).map(|(_, r)| r.clone()).unwrap_or_default();
    for (a, rules) in &by_action {
        if *a != SeccompAction::Allow && *a != default {
            for nr in rules.keys() {
                base.insert(*nr, None);
            }
        }
    }
    if default != SeccompAction::Allow {
        progs.push(program(base, default.clone(), SeccompAction::Allow)?);
    }
    for (a, rules) in by_action {
        if a != SeccompAction::Allow && a != default && !rules.is_empty() {
            progs.push(program(rules, SeccompAction::Allow, a)?);
        }
    }
    Ok(progs)
}

/// Install the programs on the calling thread (which has `no_new_privileges` or CAP_SYS_ADMIN).
pub fn install(progs: &[Vec<u8>]) -> std::io::Result<()> {
    for p in progs {
        let filters: Vec<libc::sock_filter> = p
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let prog = libc::sock_fprog { len: filters.len() as u16, filter: filters.as_ptr() as *mut libc::sock_filter };
        // SAFETY: the program outlives the call; the kernel copies it.
        if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) }
            != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use agent_client::protocols::oci::{LinuxSeccomp, LinuxSyscall};

    #[test]
    fn a_profile_becomes_a_base_program_and_one_per_other_action() {
        assert_eq!(super::number("read"), Some(0));
        assert_eq!(super::number("not_a_syscall"), None);
        let p = LinuxSeccomp {
            DefaultAction: "SCMP_ACT_ERRNO".into(),
            Syscalls: vec![
                LinuxSyscall {
                    Names: vec!["read".into(), "write".into(), "arm_fadvise64_64".into()],
                    Action: "SCMP_ACT_ALLOW".into(),
                    ..Default::default()
                },
                {
                    let mut s = LinuxSyscall {
                        Names: vec!["clone3".into()],
                        Action: "SCMP_ACT_ERRNO".into(),
                        ..Default::default()
                    };
                    s.set_errnoret(38);
                    s
                },
            ],
            ..Default::default()
        };
        let progs = super::compile(&p).unwrap();
        assert_eq!(progs.len(), 2, "the base (default EPERM) and clone3's ENOSYS");
        assert!(progs.iter().all(|p| !p.is_empty() && p.len() % 8 == 0));
        let bad = LinuxSeccomp { DefaultAction: "SCMP_ACT_NOTIFY".into(), ..Default::default() };
        assert!(super::compile(&bad).unwrap_err().contains("SCMP_ACT_NOTIFY"));
    }
}
