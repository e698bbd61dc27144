//! The pure core of a namespace list: the events of one watcher per
//! namespace in, the events one watcher over all of them would give out.
//!
//! - Until every namespace has completed its first list, nothing goes out;
//!   then `Init`, every object of every namespace (`InitApply`), `InitDone`:
//!   a store or index downstream becomes ready once, with all of them, and
//!   never sees a half-listed set.
//! - After that, changes pass through (`Apply`, `Delete`), and a re-list of
//!   one namespace (its watch expired, the API server restarted) comes out
//!   as plain changes: `Apply` for each object listed, `Delete` for each
//!   object of that namespace the list no longer has. The other namespaces'
//!   objects are untouched (a downstream `Init` would drop them all).
//!
//! Objects are keyed by name within their namespace's slot: one watcher
//! per namespace, so a name identifies an object there.

use kube::Resource;
use kube::runtime::watcher::Event;
use std::collections::BTreeMap;

/// One namespace's objects as the merge knows them.
#[derive(Debug)]
struct Slot<K> {
    /// The objects of the last complete list plus the changes since.
    held: BTreeMap<String, K>,
    /// A list in progress (`Init` … `InitDone`).
    listing: Option<BTreeMap<String, K>>,
    /// Its first list is complete.
    listed: bool,
}

/// The merge state of `n` namespaces' watch streams.
#[derive(Debug)]
pub struct Merge<K> {
    slots: Vec<Slot<K>>,
    /// The downstream has had its `InitDone`.
    synced: bool,
}

fn name_of<K: Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

impl<K: Resource + Clone> Merge<K> {
    pub fn new(namespaces: usize) -> Self {
        Self {
            slots: (0..namespaces)
                .map(|_| Slot {
                    held: BTreeMap::new(),
                    listing: None,
                    listed: false,
                })
                .collect(),
            synced: false,
        }
    }

    /// Whether the downstream has had every namespace's first list.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The events to send downstream for `event` of namespace number `slot`.
    pub fn on_event(&mut self, slot: usize, event: Event<K>) -> Vec<Event<K>> {
        let synced = self.synced;
        let s = &mut self.slots[slot];
        match event {
            Event::Init => {
                s.listing = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                // An object outside a list would be a watcher bug: keep it anyway.
                let into = s.listing.as_mut().unwrap_or(&mut s.held);
                into.insert(name_of(&object), object);
                Vec::new()
            }
            Event::InitDone => {
                let listed = s.listing.take().unwrap_or_default();
                let old = std::mem::replace(&mut s.held, listed);
                s.listed = true;
                if synced {
                    let gone = old
                        .into_iter()
                        .filter(|(name, _)| !s.held.contains_key(name))
                        .map(|(_, object)| Event::Delete(object));
                    let present = s.held.values().cloned().map(Event::Apply);
                    gone.chain(present).collect()
                } else if self.slots.iter().all(|s| s.listed) {
                    self.synced = true;
                    let mut out = vec![Event::Init];
                    for s in &self.slots {
                        out.extend(s.held.values().cloned().map(Event::InitApply));
                    }
                    out.push(Event::InitDone);
                    out
                } else {
                    Vec::new()
                }
            }
            Event::Apply(object) => {
                s.held.insert(name_of(&object), object.clone());
                if synced {
                    vec![Event::Apply(object)]
                } else {
                    Vec::new()
                }
            }
            Event::Delete(object) => {
                s.held.remove(&name_of(&object));
                if synced {
                    vec![Event::Delete(object)]
                } else {
                    Vec::new()
                }
            }
        }
    }
}
