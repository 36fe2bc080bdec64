//! SIGHUP: re-read the policy and apply what can be applied without a restart (rules,
//! enforcement and circuit-breaker maps, trusted writers); stores take a restart.

use serde_json::json;

use super::startup::{respond_plan, set_read_budget, RunOptions};
use crate::{
    config::Policy,
    kernel::loader::{self, Kernel},
    pipeline::Pipeline,
    record::StateRecord,
};

/// SIGHUP: re-read the policy and swap the rules in only if all of it is valid.
pub(super) fn reload(
    opts: &RunOptions,
    pipe: &mut Pipeline,
    k: &mut Kernel,
    responder: &mut crate::respond::act::Responder,
) -> StateRecord {
    let Some(path) = &opts.policy_path else {
        return StateRecord {
            action: "reloaded",
            detail: json!({"policy": "<embedded default>", "changed": false}),
        };
    };
    let failed = |e: String| {
        eprintln!(
            "snapmon: reload of {} failed, keeping the running policy: {e}",
            path.display()
        );
        StateRecord {
            action: "reload_failed",
            detail: json!({"policy": path.display().to_string(), "error": e}),
        }
    };
    // Refused as at start: whoever could edit the file could silence every rule.
    let policy = match Policy::load_trusted(path, opts.insecure_config) {
        Ok((p, None)) => p,
        Ok((p, Some(why))) => {
            eprintln!(
                "snapmon: warning: --insecure-config: using {} although {}",
                path.display(),
                why.what
            );
            p
        }
        Err(e) => return failed(e.to_string()),
    };
    // Build the enforcement plan before touching anything: all or nothing.
    let enf = crate::enforce::from_policy(&opts.enforce, &policy.enforce);
    let plan = match crate::enforce::plan_for(&enf) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    if plan.is_some() && !k.enforce.lsm && enf.mode == crate::enforce::Mode::On {
        return failed(
            "enforcement needs the BPF LSM hooks, which were not attached at start".into(),
        );
    }
    let mut response_plan = match respond_plan(opts, &policy) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    // The watch set is fixed at start: a store outside it is never seen by the kernel.
    for p in response_plan.iter_mut() {
        let unwatched: Vec<String> = p
            .stores
            .iter()
            .filter(|s| {
                !pipe
                    .enricher
                    .watch
                    .roots
                    .iter()
                    .any(|r| s.path.starts_with(r))
            })
            .map(|s| s.path.display().to_string())
            .collect();
        for s in unwatched {
            p.notes.push(format!(
                "store {s} is not watched: restart the agent to protect it"
            ));
        }
    }
    // The watch set is built at start: a store added or removed takes a restart.
    let restart_needed = store_changes(&opts.policy.stores, &policy.stores);
    for n in &restart_needed {
        eprintln!("snapmon: reload: {n}");
    }
    set_read_budget(&policy);
    if let Err(e) = pipe.reload(policy) {
        return failed(e);
    }
    let response = match responder.apply(k, response_plan, &pipe.classifier) {
        Ok(v) => v,
        Err(e) => json!({"active": "unknown", "error": format!("{e:#}")}),
    };
    if let Err(e) =
        loader::set_trusted_writers(&mut k.watch.trusted_writers, &pipe.rules.filter_writers())
    {
        eprintln!("snapmon: reload: trusted writers not updated: {e}");
    }
    let enforcement = if k.enforce.lsm {
        match k.reapply_enforcement(plan.as_ref(), enf.dry_run) {
            Ok(()) => {
                json!({"active": plan.is_some(), "dry_run": enf.dry_run, "monitor_only": enf.monitor_only,
                             "protected": plan.as_ref().map(|p| p.protected.len()).unwrap_or(0)})
            }
            Err(e) => json!({"active": "unknown", "error": e.to_string()}),
        }
    } else {
        json!({"active": false})
    };
    StateRecord {
        action: "reloaded",
        detail: json!({"policy": path.display().to_string(), "rule_warnings": pipe.rule_warnings(),
                       "enforcement": enforcement, "response": response, "restart_needed": restart_needed}),
    }
}

/// `[[store]]` entries a reload cannot apply (the kernel's watch set is built at start), one
/// sentence each; empty when the stores are those the agent started with.
fn store_changes(running: &[crate::config::Store], new: &[crate::config::Store]) -> Vec<String> {
    let has = |list: &[crate::config::Store], s: &crate::config::Store| {
        list.iter().any(|x| x.path == s.path)
    };
    let added = new.iter().filter(|s| !has(running, s)).map(|s| {
        format!(
            "[[store]] {} added: not watched until the agent restarts",
            s.path.display()
        )
    });
    let removed = running.iter().filter(|s| !has(new, s)).map(|s| {
        format!(
            "[[store]] {} removed: still watched until the agent restarts",
            s.path.display()
        )
    });
    added.chain(removed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Store;

    fn store(p: &str) -> Store {
        Store {
            path: p.into(),
            kind: Default::default(),
            required: false,
        }
    }

    #[test]
    fn a_reload_names_the_stores_it_cannot_apply() {
        let running = [store("/a"), store("/b")];
        assert!(store_changes(&running, &[store("/b"), store("/a")]).is_empty());
        let n = store_changes(&running, &[store("/a"), store("/c")]);
        assert_eq!(
            n,
            [
                "[[store]] /c added: not watched until the agent restarts",
                "[[store]] /b removed: still watched until the agent restarts"
            ]
        );
    }
}
