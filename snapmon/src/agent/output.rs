//! What the agent sends on: records to the sinks, with what follows from them (kernel
//! decisions as alerts, the circuit breaker's answer), and hook run counters to the metrics.

use crate::{
    kernel::loader::Kernel,
    metrics::{HookRuns, Registry},
    pipeline::Pipeline,
    record::Record,
    sink::{BrokenPipe, SinkSet},
};

/// Read every attached program's run statistics into the metrics registry (a bpf() call per
/// program: cheap at one refresh per status interval).
pub(super) fn refresh_hook_runs(k: &Kernel, reg: &Registry) {
    let (enabled, note) = k.counters.run_stats.describe();
    reg.set_hook_runs(HookRuns {
        enabled,
        note,
        programs: k.hook_runs(),
    });
}

pub(super) fn emit(sinks: &SinkSet, r: Record) -> Result<(), BrokenPipe> {
    sinks.send_owned(r)
}

/// Send what the pipeline produced, whichever way it came out (an event, a held event's
/// timer, a sequence timeout, shutdown), with what follows from it: kernel enforcement
/// decisions as alerts, the circuit breaker's answer and evidence. One path, so no alert
/// reaches the sinks without the responder having seen it.
pub(super) fn deliver(
    mut recs: Vec<Record>,
    pipe: &mut Pipeline,
    responder: &mut crate::respond::act::Responder,
    sinks: &SinkSet,
) -> Result<(), BrokenPipe> {
    deliver_from(&mut recs, pipe, responder, sinks)
}

/// [`deliver`], taking the records out of `recs` (left empty, its capacity kept for reuse).
pub(super) fn deliver_from(
    recs: &mut Vec<Record>,
    pipe: &mut Pipeline,
    responder: &mut crate::respond::act::Responder,
    sinks: &SinkSet,
) -> Result<(), BrokenPipe> {
    let follow = responder.after(recs, &mut pipe.classifier);
    for r in recs.drain(..).chain(follow) {
        let decision = match &r {
            Record::Event(ev) => crate::enforce::decision_alert(ev),
            _ => None,
        };
        sinks.send_owned(r)?;
        if let Some(a) = decision {
            sinks.send_owned(Record::Alert(Box::new(a)))?;
        }
    }
    Ok(())
}
