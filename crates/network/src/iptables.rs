//! The iptables programs, driven the way kube-proxy drives them: whole tables of rules go in
//! through one atomic `iptables-restore --noflush` (only the chains named in the input are
//! replaced). The few jumps from the built-in chains are added, when a listing shows them
//! missing, by a small restore of their own (`-I`/`-A` lines), so nobody else's rules are
//! touched.
//!
//! Chains under upstream's names (`KUBE-SERVICES`, ...) are kube-proxy's, k3s's and kubelets'
//! too, so kinglet marks those it writes (see `Saved::written_by_kinglet`): start-up refuses a
//! host with someone else's, and `kinglet cleanup` removes only ours.

use std::fmt::Write as _;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context;

/// One iptables program at a time from this process: the proxy, the network policies and the
/// pod network all program the same tables, and iptables-nft fails a check (`-C`) that races
/// a restore.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Upstream's chain name: prefix + the first 16 characters of base32(sha256(input)).
pub fn chain_name(prefix: &str, input: &str) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(input.as_bytes());
    format!("{prefix}{}", &data_encoding::BASE32.encode(&sum)[..16])
}

/// A chain of the rule set with its rules (each the arguments after `-A <chain>`).
pub type Chains = std::collections::BTreeMap<String, Vec<String>>;

/// The `iptables-restore` input that turns `old` (what is in the kernel) into `new`: chains
/// whose rules changed are redeclared (which flushes them) and refilled, chains no longer
/// wanted are deleted, untouched chains are not mentioned. `old = None` rewrites everything.
pub fn restore_input(table: &str, old: Option<&Chains>, new: &Chains, stale: &[String]) -> String {
    let mut out = String::with_capacity(new.values().map(|r| r.len() * 96).sum::<usize>() + 64);
    let changed: Vec<(&String, &Vec<String>)> = new
        .iter()
        .filter(|(c, r)| old.and_then(|o| o.get(*c)) != Some(*r))
        .collect();
    let gone: Vec<&String> = old
        .map(|o| o.keys().filter(|c| !new.contains_key(*c)).collect())
        .unwrap_or_default();
    let stale: Vec<&String> = stale.iter().filter(|c| !new.contains_key(*c)).collect();
    begin_table(&mut out, table, changed.len() + gone.len() + stale.len());
    // Declared in walk order too, not name order: iptables-nft 1.8.9 lists a table whose
    // chains the kernel holds in name order in quadratic time (`iptables -S`/`iptables-save`
    // of 10,000 Services' chains: 15 s instead of 1 s), and the kernel keeps creation order.
    let order = walk_order(&changed);
    for &i in &order {
        let _ = writeln!(out, ":{} - [0:0]", changed[i].0);
    }
    for c in gone.iter().chain(stale.iter()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for i in order {
        let (c, rules) = changed[i];
        if marked_name(c) {
            let _ = writeln!(out, "{}", mark_rule(c));
        }
        for r in rules.iter() {
            let _ = writeln!(out, "-A {c} {r}");
        }
    }
    for c in gone.iter().chain(stale.iter()) {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The order in which to write `chains`' rules: each chain right after the first chain that
/// jumps to it (depth first from the chains nothing here jumps to). The kernel keeps rules
/// where they were allocated, in the order written, and on every commit validates the table
/// by walking it from the built-in chains; written in that order (`KUBE-SERVICES`, a
/// `KUBE-SVC-`, its `KUBE-SEP-`s, ...) the walk reads memory in order: at 10,000 Services a
/// change's commit then takes ~40 ms of kernel time instead of ~60 (chains in name order).
fn walk_order(chains: &[(&String, &Vec<String>)]) -> Vec<usize> {
    let index: std::collections::HashMap<&str, usize> = (chains.iter().enumerate())
        .map(|(i, (c, _))| (c.as_str(), i))
        .collect();
    let targets: Vec<Vec<usize>> = chains
        .iter()
        .map(|(_, rules)| {
            (rules.iter())
                .filter_map(|r| {
                    let mut words = r.split_whitespace();
                    words.find(|w| *w == "-j" || *w == "-g")?;
                    index.get(words.next()?).copied()
                })
                .collect()
        })
        .collect();
    let mut jumped_to = vec![false; chains.len()];
    for t in targets.iter().flatten() {
        jumped_to[*t] = true;
    }
    let mut order = Vec::with_capacity(chains.len());
    let mut seen = vec![false; chains.len()];
    let roots = (0..chains.len()).filter(|i| !jumped_to[*i]);
    // Then whatever only a cycle reaches (iptables refuses loops, but the input is not ours to trust).
    for root in roots.chain(0..chains.len()) {
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push(i);
            stack.extend(targets[i].iter().rev().filter(|t| !seen[**t]));
        }
    }
    order
}

/// Above this many chains named in one restore, the input lists the table first (see below).
const MANY_CHAINS: usize = 500;

/// Starts the input for `table` in which `chains` chains are named. iptables-nft (1.8.x) keeps
/// every chain a restore names in a sorted linked list, which makes a restore quadratic in its
/// size: 10,000 services took 96 s instead of 3. One command naming no chain (`-S`, whose
/// listing goes nowhere) makes it cache the whole table instead, as it does without --noflush.
fn begin_table(out: &mut String, table: &str, chains: usize) {
    let _ = writeln!(out, "*{table}");
    if chains >= MANY_CHAINS {
        out.push_str("-S\n");
    }
}

/// Feeds `input` to `iptables-restore --noflush` (waiting for the xtables lock like upstream).
pub fn restore(input: &str) -> anyhow::Result<()> {
    let _one = serial();
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

/// What `iptables-save` showed of every table, read when the kernel's state is unknown (a
/// rewrite at start, at a resync or after a failure) to find the chains of ours to delete and
/// the jumps to add. iptables-nft fetches every table even for `-t` (~0.7 s next to 10,000
/// Services' rules), so one listing serves all tables.
pub struct Saved {
    text: String,
    /// Each table's chains, in the order listed.
    chains: PerTable<Vec<String>>,
    /// Each table's chains that carry kinglet's mark.
    marked: PerTable<Names>,
}

impl Saved {
    pub fn read() -> anyhow::Result<Saved> {
        Ok(Saved::parse(save(&[])?))
    }

    fn parse(text: String) -> Saved {
        let (chains, marked) = chains_in(&text);
        Saved {
            text,
            chains,
            marked,
        }
    }

    /// Whether kinglet wrote `chain` of `table`. Upstream's names (`KUBE-*`) are shared with
    /// kube-proxy, k3s and kubelets: a chain of a fixed name is ours when it carries the mark;
    /// a per-service chain (a hashed name; a mark in each, 30,000 comment matches at 10,000
    /// Services, would slow iptables-nft's full sync, docs/BENCHMARKS.md) when the table's
    /// `KUBE-SERVICES` does, kinglet then being the table's service proxy. Other names are kinglet's own (`KINGLET-*`) or tests'.
    pub fn written_by_kinglet(&self, table: &str, chain: &str) -> bool {
        if !chain.starts_with("KUBE-") {
            return true;
        }
        let carrier = match hashed_name(chain) {
            true => crate::proxy::rules::SERVICES,
            false => chain,
        };
        self.marked.get(table).is_some_and(|m| m.contains(carrier))
    }

    /// The `KUBE-*` chains that kinglet did not write, as (table, chain), sorted.
    pub fn foreign(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = (self.chains.iter())
            .flat_map(|(t, chains)| chains.iter().map(move |c| (t, c)))
            .filter(|(t, c)| c.starts_with("KUBE-") && !self.written_by_kinglet(t, c))
            .map(|(t, c)| (t.clone(), c.clone()))
            .collect();
        out.sort();
        out
    }

    fn has_chain(&self, table: &str, chain: &str) -> bool {
        (self.chains.get(table).into_iter().flatten()).any(|c| c == chain)
    }

    /// The lines of `table`'s part of the listing.
    fn table<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let start = format!("*{table}");
        (self.text.lines())
            .skip_while(move |l| *l != start)
            .skip(1)
            .take_while(|l| *l != "COMMIT")
    }

    /// The chains of `table` that `owned` accepts and kinglet wrote.
    pub fn chains(&self, table: &str, owned: impl Fn(&str) -> bool) -> Vec<String> {
        (self.chains.get(table).into_iter().flatten())
            .filter(|c| owned(c) && self.written_by_kinglet(table, c))
            .cloned()
            .collect()
    }

    /// Adds those of `jumps` that are not in place, with one small restore (`-I`/`-A` lines in
    /// order, so jumps inserted first end up in reverse order, as with `iptables -I` one by
    /// one), declaring the target chains that do not exist yet (empty). Call it before the
    /// restore that fills the targets: a large restore starts with `-S` (see `begin_table`),
    /// and with that iptables-nft does not create missing built-in chains, so jumps cannot go
    /// there. A jump not in the listing whose target chain exists is also checked with `-C`,
    /// in case this iptables prints it differently.
    pub fn add_missing_jumps(&self, jumps: &[Jump]) -> anyhow::Result<()> {
        let input = self.jumps_input(jumps)?;
        if input.is_empty() {
            return Ok(());
        }
        restore(&input)
    }

    /// The restore input of `add_missing_jumps` (empty when every jump is in place).
    fn jumps_input(&self, jumps: &[Jump]) -> anyhow::Result<String> {
        let mut input = String::new();
        for table in jumps
            .iter()
            .map(|j| j.table)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let lines: std::collections::HashSet<&str> = self.table(table).collect();
            let (mut declare, mut add) = (std::collections::BTreeSet::new(), Vec::new());
            for j in jumps.iter().filter(|j| j.table == table) {
                if lines.contains(j.listed().as_str()) {
                    continue;
                }
                let target = j.target();
                if self.has_chain(table, target) {
                    let mut check = vec!["-t", j.table, "-C", j.from];
                    check.extend(j.rule);
                    if iptables(&check)? {
                        continue;
                    }
                } else {
                    declare.insert(target);
                }
                let op = if j.first { "-I" } else { "-A" };
                add.push(format!("{op} {} {}", j.from, printed(j.rule)));
            }
            if add.is_empty() {
                continue;
            }
            let _ = writeln!(input, "*{table}");
            for c in &declare {
                let _ = writeln!(input, ":{c} - [0:0]");
            }
            for c in declare.into_iter().filter(|c| marked_name(c)) {
                let _ = writeln!(input, "{}", mark_rule(c));
            }
            for a in add {
                let _ = writeln!(input, "{a}");
            }
            input.push_str("COMMIT\n");
        }
        Ok(input)
    }
}

type PerTable<T> = std::collections::HashMap<String, T>;
type Names = std::collections::HashSet<String>;

/// Each table's chains, and those of them that carry kinglet's mark.
fn chains_in(saved: &str) -> (PerTable<Vec<String>>, PerTable<Names>) {
    let (mut chains, mut marked): (PerTable<Vec<String>>, PerTable<Names>) = Default::default();
    let mark = format!(" {MARK_MATCH}");
    let mut table = String::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(c) = line
            .strip_prefix(':')
            .and_then(|l| l.split_whitespace().next())
        {
            chains.entry(table.clone()).or_default().push(c.to_string());
        } else if let Some(c) = line
            .strip_prefix("-A ")
            .and_then(|l| l.strip_suffix(mark.as_str()))
            .filter(|c| !c.contains(' '))
        {
            marked
                .entry(table.clone())
                .or_default()
                .insert(c.to_string());
        }
    }
    (chains, marked)
}

/// The rule that marks a chain as kinglet's: it matches everything and does nothing (a comment
/// without spaces, so every iptables prints it alike).
const MARK_MATCH: &str = "-m comment --comment kinglet";

fn mark_rule(chain: &str) -> String {
    format!("-A {chain} {MARK_MATCH}")
}

/// Whether kinglet marks its chain of this name: upstream's fixed names (see
/// `Saved::written_by_kinglet`).
fn marked_name(chain: &str) -> bool {
    chain.starts_with("KUBE-") && !hashed_name(chain)
}

/// A per-service chain's name: `KUBE-<kind>-` and 16 characters of base32 (`chain_name`).
fn hashed_name(chain: &str) -> bool {
    chain
        .strip_prefix("KUBE-")
        .and_then(|c| c.rsplit_once('-'))
        .is_some_and(|(_, hash)| {
            hash.len() == 16
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        })
}

/// `iptables-save args`.
fn save(args: &[&str]) -> anyhow::Result<String> {
    let _one = serial();
    let out = Command::new("iptables-save")
        .args(args)
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

/// Runs `iptables args`: Ok(true) on success, Ok(false) when the rule or chain does not exist
/// (exit code 1), an error otherwise.
fn iptables(args: &[&str]) -> anyhow::Result<bool> {
    let _one = serial();
    let out = Command::new("iptables")
        .arg("--wait")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running iptables (is it installed?)")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => anyhow::bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
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

impl Jump {
    /// The rule as `iptables -S`/`iptables-save` list it.
    fn listed(&self) -> String {
        format!("-A {} {}", self.from, printed(self.rule))
    }

    /// The chain it jumps to.
    fn target(&self) -> &str {
        self.rule.last().copied().unwrap_or_default()
    }
}

/// `args` the way `iptables -S` prints them (arguments with spaces quoted).
fn printed(args: &[&str]) -> String {
    let quoted: Vec<String> = (args.iter())
        .map(|a| match a.contains(' ') {
            true => format!("\"{a}\""),
            false => a.to_string(),
        })
        .collect();
    quoted.join(" ")
}

/// Removes every chain of `table` that `owned` accepts and kinglet wrote, and the jumps (all
/// copies) into them: the uninstall path, one listing and one restore. Chains of other
/// programs stay, with their jumps.
pub fn remove(jumps: &[Jump], table: &str, owned: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let saved = Saved::read()?;
    let mine = saved.chains(table, owned);
    let listed: Vec<&str> = saved.table(table).collect();
    let mut deletes = Vec::new();
    // Jumps to chains that are not ours are someone else's (upstream installs the same ones).
    let to_ours = |j: &&Jump| j.table == table && mine.iter().any(|c| c == j.target());
    for j in jumps.iter().filter(to_ours) {
        let line = j.listed();
        let copies = listed.iter().filter(|l| **l == line).count();
        deletes.extend(std::iter::repeat_n(
            format!("-D {} {}", j.from, printed(j.rule)),
            copies,
        ));
        if copies == 0 {
            // Not listed as expected (this iptables may print it differently): one call per
            // copy, which fails (exit 1) once none is left.
            let mut del = vec!["-t", j.table, "-D", j.from];
            del.extend(j.rule);
            while iptables(&del).unwrap_or(false) {}
        }
    }
    if mine.is_empty() && deletes.is_empty() {
        return Ok(());
    }
    // Jumps out first, then flush all, so chains that jump to each other can be deleted in
    // any order.
    let mut input = String::new();
    begin_table(&mut input, table, mine.len());
    for d in &deletes {
        let _ = writeln!(input, "{d}");
    }
    for c in &mine {
        let _ = writeln!(input, ":{c} - [0:0]");
    }
    for c in &mine {
        let _ = writeln!(input, "-X {c}");
    }
    input.push_str("COMMIT\n");
    restore(&input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_compared_as_iptables_prints_them() {
        // As `iptables -t nat -S PREROUTING` printed the proxy's host-port jump (iptables 1.8.9).
        let line = "-A PREROUTING -m comment --comment \"kube hostport portals\" -m addrtype --dst-type LOCAL -j KUBE-HOSTPORTS";
        let jump = (crate::proxy::rules::JUMPS.iter())
            .find(|j| j.from == "PREROUTING" && j.rule.ends_with(&["KUBE-HOSTPORTS"]))
            .expect("the host-port jump");
        assert_eq!(jump.listed(), line);
    }

    #[test]
    fn chains_are_read_per_table() {
        let saved = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n-A INPUT -j KUBE-FORWARD\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
        let (chains, marked) = chains_in(saved);
        assert_eq!(chains["filter"], ["INPUT", "KUBE-FORWARD"]);
        assert_eq!(chains["nat"], ["KUBE-SERVICES"]);
        assert!(marked.is_empty());
    }

    fn jump(table: &'static str, from: &'static str, target: &'static str, first: bool) -> Jump {
        Jump {
            table,
            from,
            rule: Box::leak(Box::new([
                "-m",
                "comment",
                "--comment",
                "a b",
                "-j",
                target,
            ])),
            first,
        }
    }

    #[test]
    fn only_missing_jumps_are_added_in_order() {
        let jumps = [
            jump("filter", "FORWARD", "K-ONE", true),
            jump("filter", "FORWARD", "K-TWO", true),
            jump("filter", "INPUT", "K-ONE", false),
            jump("filter", "INPUT", "K-THREE", false),
        ];
        // K-THREE is in place; nothing else is (and the target chains do not exist, so no
        // `-C` is needed to know). The nat table has a look-alike line that must not count.
        let saved = Saved::parse(
            "*nat\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"a b\" -j K-ONE\nCOMMIT\n\
                   *filter\n:INPUT ACCEPT [0:0]\n:K-THREE - [0:0]\n\
                   -A INPUT -m comment --comment \"a b\" -j K-THREE\nCOMMIT\n"
                .into(),
        );
        assert_eq!(
            saved.jumps_input(&jumps).unwrap(),
            "*filter\n:K-ONE - [0:0]\n:K-TWO - [0:0]\n\
             -I FORWARD -m comment --comment \"a b\" -j K-ONE\n\
             -I FORWARD -m comment --comment \"a b\" -j K-TWO\n\
             -A INPUT -m comment --comment \"a b\" -j K-ONE\nCOMMIT\n"
        );
        assert_eq!(saved.chains("filter", |c| c.starts_with("K-")), ["K-THREE"]);
        let all_there = Saved::parse(saved.text.replace(":K-THREE", ":K-X"));
        assert!(all_there.jumps_input(&jumps[3..]).unwrap().is_empty());
    }

    /// Runs `f` on a thread of its own in a new network namespace (root and iptables needed;
    /// skipped without them), so the test's rules never touch the host's.
    fn in_own_network_namespace(f: impl FnOnce() + Send + 'static) {
        let have_iptables = Command::new("iptables").arg("--version").output().is_ok();
        if !nix::unistd::Uid::effective().is_root() || !have_iptables {
            eprintln!("skipped: needs root and iptables");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        })
        .join()
        .unwrap();
    }

    /// A fresh network namespace has no built-in chains, and a restore that starts with `-S`
    /// (500+ chains) does not create them: the jumps must still go in, once, and a second
    /// full rewrite must not add them again; uninstalling removes ours and nothing else.
    /// Needs root and iptables (CI has both); runs in a network namespace of its own, entered
    /// by this test's thread only.
    #[test]
    fn jumps_go_into_a_fresh_namespace_next_to_a_large_restore() {
        in_own_network_namespace(|| {
            let jumps = [
                jump("nat", "PREROUTING", "K-TEST-SVC", true),
                jump("nat", "OUTPUT", "K-TEST-SVC", true),
                jump("filter", "FORWARD", "K-TEST-FWD", false),
            ];
            let mut nat: Chains = (0..600)
                .map(|i| (format!("K-TEST-{i}"), vec!["-j RETURN".to_string()]))
                .collect();
            nat.insert("K-TEST-SVC".into(), vec!["-j K-TEST-7".into()]);
            let filter: Chains = [("K-TEST-FWD".to_string(), vec!["-j RETURN".to_string()])].into();
            for _ in 0..2 {
                let saved = Saved::read().unwrap();
                saved.add_missing_jumps(&jumps).unwrap();
                let owned = |c: &str| c.starts_with("K-TEST-");
                let mut input = restore_input("nat", None, &nat, &saved.chains("nat", owned));
                assert!(input.contains("\n-S\n"));
                input.push_str(&restore_input("filter", None, &filter, &[]));
                restore(&input).unwrap();
                let now = save(&[]).unwrap();
                for j in &jumps {
                    let line = j.listed();
                    assert_eq!(now.lines().filter(|l| *l == line).count(), 1, "{line}");
                }
                assert!(now.contains("-A K-TEST-599 -j RETURN"));
            }
            // Uninstall: one listing and one restore per table; someone else's chain and jump
            // stay, and removing again finds nothing to do.
            let foreign = "*nat\n:OTHER - [0:0]\n-A PREROUTING -j OTHER\nCOMMIT\n";
            restore(foreign).unwrap();
            for _ in 0..2 {
                for table in ["nat", "filter"] {
                    remove(&jumps, table, |c| c.starts_with("K-TEST-")).unwrap();
                }
                let now = save(&[]).unwrap();
                assert!(!now.contains("K-TEST-"), "{now}");
                assert!(now.contains("-A PREROUTING -j OTHER"), "{now}");
            }
        });
    }

    #[test]
    fn kinglets_chains_are_told_by_the_mark() {
        let svc = chain_name("KUBE-SVC-", "default/web:http");
        let saved = Saved::parse(format!(
            "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n\
             *filter\n:KUBE-SERVICES - [0:0]\n:KUBE-FOO - [0:0]\n:KUBE-SEP-AAAAAAAAAAAAAAAA - [0:0]\n\
             -A KUBE-FOO -m comment --comment kinglet -j RETURN\nCOMMIT\n\
             *nat\n:KUBE-SERVICES - [0:0]\n:{svc} - [0:0]\n:KINGLET-POSTRTG - [0:0]\n\
             -A KUBE-SERVICES -m comment --comment kinglet\nCOMMIT\n"
        ));
        // Marked, or per-service where KUBE-SERVICES is marked; a mark with more to the rule
        // is not the mark; kinglet's own names are its own.
        assert!(saved.written_by_kinglet("nat", "KUBE-SERVICES"));
        assert!(saved.written_by_kinglet("nat", &svc));
        assert!(saved.written_by_kinglet("nat", "KINGLET-POSTRTG"));
        assert!(!saved.written_by_kinglet("filter", "KUBE-SERVICES"));
        assert!(!saved.written_by_kinglet("filter", "KUBE-FOO"));
        assert!(!saved.written_by_kinglet("filter", "KUBE-SEP-AAAAAAAAAAAAAAAA"));
        let foreign: Vec<String> = (saved.foreign().into_iter())
            .map(|(t, c)| format!("{t}/{c}"))
            .collect();
        assert_eq!(
            foreign,
            [
                "filter/KUBE-FOO",
                "filter/KUBE-SEP-AAAAAAAAAAAAAAAA",
                "filter/KUBE-SERVICES",
                "mangle/KUBE-KUBELET-CANARY"
            ]
        );
        let owned = |c: &str| c.starts_with("KUBE-");
        assert_eq!(saved.chains("nat", owned), ["KUBE-SERVICES", svc.as_str()]);
        assert!(saved.chains("filter", owned).is_empty());
    }

    #[test]
    fn fixed_names_are_marked_when_written_hashed_ones_are_not() {
        let svc = chain_name("KUBE-SVC-", "default/web:http");
        assert!(hashed_name(&svc) && !hashed_name("KUBE-PROXY-CANARY"));
        assert!(!hashed_name("KUBE-SVC-ABC") && !hashed_name("KUBE-SVC-abcdefghijklmnop"));
        let chains: Chains = [
            ("KUBE-SERVICES".to_string(), vec![format!("-j {svc}")]),
            (svc.clone(), vec!["-j RETURN".to_string()]),
            ("KUBE-PROXY-CANARY".to_string(), vec![]),
            ("KINGLET-FWD".to_string(), vec!["-j ACCEPT".to_string()]),
        ]
        .into();
        let input = restore_input("nat", None, &chains, &[]);
        let mut marks: Vec<&str> = (input.lines())
            .filter_map(|l| l.strip_suffix(" -m comment --comment kinglet"))
            .collect();
        marks.sort();
        assert_eq!(
            marks,
            ["-A KUBE-PROXY-CANARY", "-A KUBE-SERVICES"],
            "{input}"
        );
        // Each mark comes before the chain's rules; declared chains of the jumps get one too.
        assert!(
            input.contains("-A KUBE-SERVICES -m comment --comment kinglet\n-A KUBE-SERVICES -j ")
        );
        let jumps = [jump("nat", "PREROUTING", "KUBE-SERVICES", true)];
        let input = Saved::parse(String::new()).jumps_input(&jumps).unwrap();
        assert!(
            input.contains(
                ":KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment kinglet\n"
            ),
            "{input}"
        );
        // And the listing of what was written reads them as kinglet's.
        let saved = Saved::parse(restore_input("nat", None, &chains, &[]).replace("-S\n", ""));
        assert!(saved.foreign().is_empty());
    }

    /// Someone else's chains under upstream's names, with the same jumps as ours, are left
    /// alone by the uninstall; ours, once written, go. Needs root and iptables, as above.
    #[test]
    fn uninstall_leaves_foreign_kube_chains_and_their_jumps() {
        in_own_network_namespace(|| {
            let jumps = [jump("filter", "OUTPUT", "KUBE-SERVICES", false)];
            let kube = |c: &str| c.starts_with("KUBE-");
            // Another kube-proxy's: the same jump into an unmarked KUBE-SERVICES, and a chain
            // kinglet never writes.
            restore(
                "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-FOO - [0:0]\n-A KUBE-FOO -j RETURN\n\
                 -A OUTPUT -m comment --comment \"a b\" -j KUBE-SERVICES\nCOMMIT\n",
            )
            .unwrap();
            let foreign = Saved::read().unwrap().foreign();
            assert_eq!(foreign.len(), 2, "{foreign:?}");
            remove(&jumps, "filter", kube).unwrap();
            let now = save(&[]).unwrap();
            assert!(
                now.contains(":KUBE-SERVICES") && now.contains("-j KUBE-SERVICES"),
                "{now}"
            );
            // Taken over: written by kinglet, it is kinglet's, and goes with its jump.
            let ours: Chains =
                [("KUBE-SERVICES".to_string(), vec!["-j RETURN".to_string()])].into();
            restore(&restore_input("filter", None, &ours, &[])).unwrap();
            let saved = Saved::read().unwrap();
            let left: Vec<String> = saved.foreign().into_iter().map(|(_, c)| c).collect();
            assert_eq!(left, ["KUBE-FOO"], "{}", saved.text);
            remove(&jumps, "filter", kube).unwrap();
            let now = save(&[]).unwrap();
            assert!(!now.contains("KUBE-SERVICES"), "{now}");
            assert!(now.contains("-A KUBE-FOO -j RETURN"), "{now}");
        });
    }

    #[test]
    fn chains_are_written_in_walk_order() {
        let chains: Chains = [
            (
                "A-SEP".to_string(),
                vec!["-j DNAT --to-destination 10.42.0.5:80".to_string()],
            ),
            (
                "B-MARK".to_string(),
                vec!["-j MARK --or-mark 0x4000".to_string()],
            ),
            (
                "C-SVC".to_string(),
                vec!["-j B-MARK".to_string(), "-m statistic -j A-SEP".to_string()],
            ),
            (
                "D-SERVICES".to_string(),
                vec!["-d 10.43.0.1/32 -j C-SVC".to_string()],
            ),
        ]
        .into();
        let input = restore_input("nat", None, &chains, &[]);
        let order: Vec<&str> = (input.lines())
            .filter_map(|l| l.strip_prefix("-A ")?.split(' ').next())
            .collect();
        assert_eq!(order, ["D-SERVICES", "C-SVC", "C-SVC", "B-MARK", "A-SEP"]);
        let declared: Vec<&str> = (input.lines())
            .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
            .collect();
        assert_eq!(declared, ["D-SERVICES", "C-SVC", "B-MARK", "A-SEP"]);
    }
}
