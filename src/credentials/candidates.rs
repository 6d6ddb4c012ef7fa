//! The order in which one request tries the keys of a set.
//!
//! design.md, "Request path" step 5: keys that are not resting come first
//! (in order for `{ default, fallback }`, from the next round-robin position
//! for a pool); a key whose rest just ended and that this request won the
//! right to probe goes before them; resting keys come last (soonest rest end
//! first) rather than no answer at all. A `dynamic::` key counts when the
//! request carries its header, which is taken out so it is never forwarded.
//! Runs on the request path: a few atomic reads per key, no lock.

use std::time::Duration;

use http::HeaderMap;
use smallvec::SmallVec;

use super::pool::{Standing, now_ms};
use super::{Candidate, Chosen, Key, KeySet, KeyValue, NoCredential, Policy};

/// One request's credentials, best first: held inline up to two (a key and
/// its fallback), so the common request allocates nothing for them.
pub(crate) type Candidates<'a> = SmallVec<[Candidate<'a>; 2]>;

/// Where one key goes in the order.
enum Place<'a> {
    /// Usable now, in set order.
    Usable(Candidate<'a>),
    /// This request probes it: before the usable ones.
    Probe(Candidate<'a>),
    /// Resting until the given time: a last resort.
    Resting(u64, Candidate<'a>),
    /// Cannot serve this request (missing, or a dynamic key without its header).
    Skip,
}

impl KeySet {
    /// The credentials to try for one request, best first (see the module).
    ///
    /// # Errors
    ///
    /// [`NoCredential`] naming every location and why it cannot serve.
    pub(crate) fn candidates(
        &self,
        headers: &mut HeaderMap,
        probe_window: Duration,
    ) -> Result<Candidates<'_>, NoCredential> {
        let n = self.keys.len();
        let start = if self.policy == Policy::Pool {
            self.cursor.next(n)
        } else {
            0
        };
        // A set's only key never rests (`place`): no clock to read.
        let now = if n > 1 { now_ms() } else { 0 };
        let mut usable = Candidates::with_capacity(n);
        let mut resting = Vec::new();
        let mut probes = 0;
        for key in self.keys.iter().cycle().skip(start).take(n) {
            match place(key, headers, n == 1, now, probe_window) {
                Place::Usable(c) => usable.push(c),
                Place::Probe(c) => {
                    usable.insert(probes, c);
                    probes += 1;
                }
                Place::Resting(until, c) => resting.push((until, c)),
                Place::Skip => {}
            }
        }
        if !resting.is_empty() {
            resting.sort_by_key(|(until, _)| *until);
            usable.extend(resting.into_iter().map(|(_, c)| c));
        }
        if usable.is_empty() {
            return Err(self.why_none());
        }
        Ok(usable)
    }

    /// Every location of the set and why it cannot serve.
    fn why_none(&self) -> NoCredential {
        NoCredential(
            self.keys
                .iter()
                .map(|k| match &k.value {
                    KeyValue::Missing(why) => why.to_string(),
                    KeyValue::Dynamic(name) => {
                        format!("{}: request has no {} header", k.location, name.header())
                    }
                    _ => k.location.to_string(),
                })
                .collect(),
        )
    }
}

/// Where `key` goes for this request. `alone`: the set's only key is never
/// rested out of use (there is no other).
fn place<'a>(
    key: &'a Key,
    headers: &mut HeaderMap,
    alone: bool,
    now: u64,
    probe_window: Duration,
) -> Place<'a> {
    let location = &key.location;
    let unrested = |chosen| Candidate {
        chosen,
        health: None,
        location,
        was_rested: false,
    };
    let (chosen, health) = match &key.value {
        KeyValue::Static {
            header,
            fingerprint,
            health,
        } => (
            Chosen::Static {
                header,
                fingerprint: *fingerprint,
            },
            health,
        ),
        KeyValue::Token {
            cache,
            fingerprint,
            health,
            ..
        } => (
            Chosen::Token {
                cache,
                fingerprint: *fingerprint,
            },
            health,
        ),
        KeyValue::Dynamic(name) => {
            return match headers.remove(name.header()) {
                Some(mut v) => {
                    v.set_sensitive(true);
                    Place::Usable(unrested(Chosen::Dynamic(v)))
                }
                None => Place::Skip,
            };
        }
        KeyValue::None => return Place::Usable(unrested(Chosen::Nothing)),
        KeyValue::Missing(_) => return Place::Skip,
    };
    let standing = if alone {
        Standing::Healthy
    } else {
        health.standing(now, probe_window)
    };
    let candidate = Candidate {
        chosen,
        health: Some(health),
        location,
        was_rested: standing != Standing::Healthy,
    };
    match standing {
        Standing::Healthy => Place::Usable(candidate),
        Standing::Probe => Place::Probe(candidate),
        Standing::Rested(until) => Place::Resting(until, candidate),
    }
}
