//! The iptables programs, driven the way kube-proxy drives them: whole tables of rules go in
//! through one atomic `iptables-restore --noflush` (only the chains named in the input are
//! replaced), and the few jumps from the built-in chains are checked and inserted one by one so
//! nobody else's rules are touched.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context;

/// A chain of the rule set with its rules (each the arguments after `-A <chain>`).
pub type Chains = std::collections::BTreeMap<String, Vec<String>>;

/// Feeds `input` to `iptables-restore --noflush` (waiting for the xtables lock like upstream).
pub fn restore(input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is iptables installed?)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "iptables-restore failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The names of the chains in `table` (from `iptables-save`).
pub fn chains(table: &str) -> anyhow::Result<Vec<String>> {
    Ok(save(table)?
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// `iptables-save -t table`.
pub fn save(table: &str) -> anyhow::Result<String> {
    let out = Command::new("iptables-save")
        .args(["-t", table])
        .output()
        .context("running iptables-save (is iptables installed?)")?;
    anyhow::ensure!(
        out.status.success(),
        "iptables-save failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `chain` exists in `table`.
pub fn chain_exists(table: &str, chain: &str) -> bool {
    iptables(&["-t", table, "-S", chain]).unwrap_or(false)
}

fn iptables(args: &[&str]) -> anyhow::Result<bool> {
    let out = Command::new("iptables")
        .arg("--wait")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running iptables (is it installed?)")?;
    Ok(out.status.success())
}

/// A jump from a built-in chain into one of ours.
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    /// The rule, e.g. `-m comment --comment "..." -j KUBE-SERVICES`, as separate arguments.
    pub rule: &'static [&'static str],
    /// Inserted first (`-I`) rather than appended.
    pub first: bool,
}

/// Makes sure every jump is in place (the chains they target must exist already).
pub fn ensure_jumps(jumps: &[Jump]) -> anyhow::Result<()> {
    for j in jumps {
        let mut check = vec!["-t", j.table, "-C", j.from];
        check.extend(j.rule);
        if iptables(&check)? {
            continue;
        }
        let mut add = vec!["-t", j.table, if j.first { "-I" } else { "-A" }, j.from];
        add.extend(j.rule);
        anyhow::ensure!(
            iptables(&add)?,
            "iptables could not add the jump `{}` to {}/{}",
            j.rule.join(" "),
            j.table,
            j.from
        );
    }
    Ok(())
}

/// Removes the jumps (all copies) and then every chain of `table` that `owned` accepts: the
/// uninstall path. Chains of other programs stay.
pub fn remove(jumps: &[Jump], table: &str, owned: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    for j in jumps.iter().filter(|j| j.table == table) {
        let mut del = vec!["-t", j.table, "-D", j.from];
        del.extend(j.rule);
        while iptables(&del)? {}
    }
    let mine: Vec<String> = chains(table)?.into_iter().filter(|c| owned(c)).collect();
    if mine.is_empty() {
        return Ok(());
    }
    // Flush all first, so chains that jump to each other can then be deleted in any order.
    let mut input = format!("*{table}\n");
    for c in &mine {
        input.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in &mine {
        input.push_str(&format!("-X {c}\n"));
    }
    input.push_str("COMMIT\n");
    restore(&input)
}
