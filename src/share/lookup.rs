//! Lookup and push through a registry: a local miss asks the registry for an entry with the
//! layer's input digest; a local hit can be pushed.
//!
//! Owns: [`Session::lookup_remote`] and [`Session::push_layer`], what the registry answered
//! ([`RemoteAnswer`]), and the order of a remote hit: the local lookup's walk gives the input
//! digest (no second walk) → find → check the record ([`crate::share::accept`]) → fetch the
//! blobs into the local OCI layout (verified, atomic: [`crate::share::registry::Remote::fetch_blobs`]) →
//! check that every blob the outputs reach is there → record the layer with a put of **this
//! machine's** walk, as pulled → check that what was recorded has the digest asked for → the
//! outputs rule decides the hit, as for every hit (`engine/outputs.rs`).
//!
//! Must never: fail a lookup because of the registry (a registry that is down, slow, refuses
//! or serves something wrong gives the local answer and a [`RemoteFailure`] for the caller to
//! report once), record anything from a remote entry but its output manifests, or record a
//! layer whose blobs are not all in the local layout.

use std::collections::BTreeMap;

use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::inputs::Base;
use crate::path::hex;
use crate::reason::MissReason;
use crate::schema::{Origin, VersionRecord};
use crate::share::registry::{
    FetchReport, LocalBlob, PushReport, Remote, RemoteEntry, RemoteError,
};
use crate::share::{self, RecordError};

use crate::engine::outputs;
use crate::engine::{
    BuildLookup, CachedEntry, Lookup, LookupMode, LookupRecord, Outcome, Seen, Session,
};

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HitSource {
    /// The local cache had it.
    Local,
    /// The registry had it: its blobs were fetched and the layer recorded locally.
    Remote,
}

/// Why the registry could not help; the lookup answered from the local cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteFailure {
    /// The registry was down, slow, refused, or served a blob that did not verify.
    #[error(transparent)]
    Registry(#[from] RemoteError),
    /// The entry found does not describe the inputs asked for, or cannot be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The build names no OCI layout to fetch blobs into or push them from.
    #[error(
        "layer {layer:?}: the build names no OCI layout (`oci_layout` in the plan): a remote cache moves output blobs to and from it"
    )]
    NoLayout {
        /// The layer.
        layer: String,
    },
    /// The inputs changed while the layer was being pulled: nothing was recorded.
    #[error("layer {layer:?}: not recorded from the registry: {detail}")]
    InputsChanged {
        /// The layer.
        layer: String,
        /// What changed.
        detail: String,
    },
}

/// What the registry answered a remote lookup (or why it was not asked), so that a person can
/// tell "nobody pushed these inputs" from "the entry was refused" from "the registry is down".
/// The input digest is the one this machine computed from its own inputs: compare it with the
/// one the machine that pushed printed (`lookup --json`, `"remote"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RemoteAnswer {
    /// The registry was not asked: the local cache hit, or the layer has no input digest to
    /// ask for (its base misses, it is not cacheable, a file changed while it was read), or
    /// there is no OCI layout to fetch into.
    NotAsked {
        /// Why not.
        why: String,
    },
    /// The registry has no entry for this layer with this input digest.
    NoEntry {
        /// The input digest asked for, hex.
        input_digest: String,
    },
    /// It had one, and it was recorded here (a remote hit, unless the outputs rule then found
    /// an output that no registry can carry, such as a build-only layer's rootfs directory).
    Taken {
        /// The input digest asked for, hex.
        input_digest: String,
    },
    /// It had one, but it was not taken: it did not check out (names other inputs, does not
    /// hash to its digest, a blob did not verify, it does not carry every blob its outputs
    /// reach), or this machine's inputs changed while it was pulled.
    Refused {
        /// The input digest asked for, hex.
        input_digest: String,
        /// Why.
        why: String,
    },
    /// It could not be asked, or did not answer: unreachable, timed out, refused access, or
    /// failed.
    Unreachable {
        /// The input digest asked for, hex.
        input_digest: String,
        /// Why.
        why: String,
    },
}

impl RemoteFailure {
    /// True when a builder should stop asking the registry for the rest of its run
    /// ([`RemoteError::ends_the_run`]); false for a failure of one entry or a local one (a
    /// record that does not check out, no OCI layout, inputs that changed while pulling).
    pub fn ends_the_run(&self) -> bool {
        match self {
            RemoteFailure::Registry(e) => e.ends_the_run(),
            _ => false,
        }
    }
}

impl RemoteAnswer {
    /// One line for a person, naming `remote` (REGISTRY/REPO) and the layer.
    pub fn describe(&self, remote: &str, layer: &str) -> String {
        let layer = crate::path::escape_bytes(layer.as_bytes());
        match self {
            RemoteAnswer::NotAsked { why } => {
                format!("remote {remote} was not asked for layer {layer}: {why}")
            }
            RemoteAnswer::NoEntry { input_digest } => format!(
                "remote {remote} has no entry for layer {layer} with input digest {input_digest} \
                 (this machine's inputs): nobody pushed these inputs"
            ),
            RemoteAnswer::Taken { input_digest } => format!(
                "remote {remote} had the entry for layer {layer} with input digest \
                 {input_digest}; it was recorded here"
            ),
            RemoteAnswer::Refused { input_digest, why } => format!(
                "remote {remote} has an entry for layer {layer} with input digest \
                 {input_digest}, but it was refused: {why}"
            ),
            RemoteAnswer::Unreachable { input_digest, why } => format!(
                "remote {remote} could not be asked for layer {layer} (input digest \
                 {input_digest}): {why}"
            ),
        }
    }
}

/// The result of [`Session::lookup_remote`].
#[derive(Debug)]
pub struct RemoteLookup {
    /// The answer: a hit (local, or recorded from the registry) or the local miss.
    pub lookup: Lookup,
    /// Where the hit came from; `None` on a miss.
    pub source: Option<HitSource>,
    /// What the registry answered, or why it was not asked.
    pub answer: RemoteAnswer,
    /// The blobs fetched for a remote hit.
    pub fetched: Option<FetchReport>,
    /// Why the registry could not help, when it was asked and failed.
    pub failure: Option<RemoteFailure>,
    /// What the local lookup saw, for a put after a build; `None` after a remote hit (the layer
    /// is recorded: there is nothing to put).
    seen: Option<Seen>,
    /// On a local hit, the base proof a dependent's lookup may trust (see `session.rs`).
    result: Option<crate::engine::session::Proof>,
    /// Binds the record to this cache.
    record_key: crate::engine::record::RecordKey,
}

impl RemoteLookup {
    /// The record for `put --from` in another process ([`LookupRecord`]): on a local hit or a
    /// miss, what the local lookup saw; `None` after a remote hit (there is nothing to put)
    /// and for a layer that is not cacheable.
    pub fn record(&self) -> Option<LookupRecord> {
        self.seen
            .as_ref()
            .map(|seen| LookupRecord::new(&self.lookup.layer, seen, self.result, &self.record_key))
    }
}

/// What [`Session::push_layer`] did for one layer.
#[derive(Debug)]
#[non_exhaustive]
pub enum PushOutcome {
    /// The entry was pushed.
    Pushed(PushReport),
    /// The registry already has an entry for this layer and input digest.
    AlreadyThere {
        /// Its tag.
        tag: String,
    },
    /// The layer is not cached here for its inputs as they are: nothing to push.
    Skipped(Vec<MissReason>),
    /// A local error: its inputs match a stored version, but its outputs are not all here
    /// (the outputs rule, `engine/outputs.rs`), or a blob could not be read or does not match
    /// its descriptor. Nothing was pushed.
    Unusable(String),
    /// The registry could not take it.
    Failed(RemoteFailure),
}

impl Session<'_> {
    /// Looks up `layer` locally (observing its inputs, as [`Session::lookup`] does) and, on a
    /// miss, asks `remote` for an entry with the layer's input digest. A remote hit fetches the
    /// entry's blobs into the cache's OCI layout, checks that every blob its outputs reach is
    /// there, records the layer from this machine's walk with the entry's output manifests (as
    /// [`crate::schema::Origin::Pulled`]), and answers a hit with [`HitSource::Remote`] when
    /// the outputs rule then holds. Errors are local errors only; anything the registry does
    /// wrong is in [`RemoteLookup::failure`] next to the local answer, and what it answered is
    /// in [`RemoteLookup::answer`].
    pub fn lookup_remote(
        &mut self,
        layer: &str,
        explain: bool,
        remote: &Remote,
    ) -> Result<RemoteLookup> {
        let mode = LookupMode {
            explain,
            observe: true,
            verify: false,
        };
        let local = self.lookup_for_build(layer, mode)?;
        if local.is_hit() {
            let not_asked = RemoteAnswer::NotAsked {
                why: "the local cache hit".into(),
            };
            return Ok(RemoteLookup {
                source: Some(HitSource::Local),
                ..local_answer(local, not_asked, None)
            });
        }
        let Some(layout) = self.cache.config.oci_layout.clone() else {
            let failure = RemoteFailure::NoLayout {
                layer: layer.to_string(),
            };
            let not_asked = RemoteAnswer::NotAsked {
                why: failure.to_string(),
            };
            return Ok(local_answer(local, not_asked, Some(failure)));
        };
        // What the local lookup walked (it observed every source): no second walk.
        let Some(digest) = local.input_digest else {
            let why = self.why_no_digest(layer, &local);
            return Ok(local_answer(local, RemoteAnswer::NotAsked { why }, None));
        };
        let asked = Asked {
            layer,
            digest,
            hex: hex(&digest),
        };
        match asked.fetch(remote, &layout) {
            Ok((manifests, fetched)) => self.record_pulled(&asked, local, manifests, fetched),
            Err(refusal) => {
                let Refusal { answer, failure } = *refusal;
                let mut local = local;
                if let Some(RemoteFailure::Registry(e)) = &failure {
                    local.lookup = untrusted_miss(local.lookup, remote, e);
                }
                Ok(local_answer(local, answer, failure))
            }
        }
    }

    /// Records a fetched entry from this machine's walk (the local lookup's) with the entry's
    /// output manifests, as pulled; the outputs rule then decides the hit, as for every hit.
    fn record_pulled(
        &mut self,
        asked: &Asked<'_>,
        local: BuildLookup,
        manifests: BTreeMap<String, Descriptor>,
        fetched: FetchReport,
    ) -> Result<RemoteLookup> {
        let layer = asked.layer;
        let record = match self.put_as(&local, &manifests, Origin::Pulled) {
            Ok(r) => r,
            Err(Error::InputsChanged { layer, changes }) => {
                let changed = crate::refusal::PutChange::join(&changes);
                let a = asked.refused(format!(
                    "this machine's inputs changed while it was pulled: {changed}"
                ));
                let detail = format!("its inputs changed: {changed}");
                let failure = RemoteFailure::InputsChanged { layer, detail };
                return Ok(local_answer(local, a, Some(failure)));
            }
            Err(e) => return Err(e),
        };
        if record.input_digest != asked.digest {
            // The inputs changed between the digest's walk and the put's: what was recorded is
            // not what the registry's entry was for.
            self.cache.remove_version(layer, &record.input_digest)?;
            self.memo.remove(layer);
            self.forget_dependents_of(layer);
            let failure = RemoteFailure::InputsChanged {
                layer: layer.to_string(),
                detail: "its inputs changed while it was pulled".into(),
            };
            let a = asked.refused("this machine's inputs changed while it was pulled".into());
            return Ok(local_answer(local, a, Some(failure)));
        }
        self.pulled_answer(asked, local, record, manifests, fetched)
    }

    /// The answer for a layer recorded from a registry: the hit is decided by the outputs rule,
    /// as every hit is (a pulled version asks for no builder's copy; a build-only layer's rootfs
    /// directory is no registry's to carry).
    fn pulled_answer(
        &self,
        asked: &Asked<'_>,
        local: BuildLookup,
        record: VersionRecord,
        manifests: BTreeMap<String, Descriptor>,
        fetched: FetchReport,
    ) -> Result<RemoteLookup> {
        let layer = asked.layer;
        let taken = RemoteAnswer::Taken {
            input_digest: asked.hex.clone(),
        };
        let inputs = self.build.layer(layer)?;
        if let Some(missing) = outputs::missing(&self.cache.config, &record, &inputs.overlay_dirs)?
        {
            let lookup = Lookup {
                layer: layer.to_string(),
                outcome: Outcome::Miss(vec![missing.reason()]),
                lying_rows: Vec::new(),
                base_of_dependents: Some(crate::version::entry_digest_of(&record)),
                input_digest: Some(asked.digest),
            };
            return Ok(RemoteLookup {
                lookup,
                fetched: Some(fetched),
                ..local_answer(local, taken, None)
            });
        }
        let lookup = Lookup {
            layer: layer.to_string(),
            outcome: Outcome::Hit(Box::new(CachedEntry { record, manifests })),
            lying_rows: Vec::new(),
            base_of_dependents: None,
            input_digest: Some(asked.digest),
        };
        Ok(RemoteLookup {
            lookup,
            source: Some(HitSource::Remote),
            answer: taken,
            fetched: Some(fetched),
            failure: None,
            seen: None,
            result: None,
            record_key: local.record_key,
        })
    }

    /// Why a lookup has no input digest to ask a registry for.
    fn why_no_digest(&self, layer: &str, local: &BuildLookup) -> String {
        let Some(seen) = local.seen.as_ref() else {
            return "the layer is not cacheable".into();
        };
        if seen.base_hash.is_none() {
            return match self.build.layer(layer).map(|l| &l.base) {
                Ok(Base::Built { layer: base }) => format!(
                    "its base layer {} misses here, so its input digest is not known (look the \
                     base up through the registry, or pull it, first)",
                    crate::path::escape_bytes(base.as_bytes())
                ),
                _ => "its base cannot be resolved here, so its input digest is not known".into(),
            };
        }
        "a source could not be walked soundly (a file changed while it was read), so its \
         input digest is not known"
            .into()
    }

    /// Pushes `layer` to `remote` when it hits locally: its wire record
    /// ([`crate::share::SharedRecord`]) and, for each output manifest, every blob it reaches
    /// (manifest, config, layers; an index's manifests) from the cache's OCI layout — the
    /// blobs the outputs rule checks. An entry the registry already has for this layer and
    /// input digest is not pushed again. A layer whose inputs match a stored version but whose
    /// outputs are not all here is [`PushOutcome::Unusable`], a local error.
    pub fn push_layer(&mut self, layer: &str, remote: &Remote) -> Result<PushOutcome> {
        let found = self.lookup_with(layer, LookupMode::CHECK)?;
        let entry = match found.outcome {
            Outcome::Hit(e) => e,
            Outcome::Miss(reasons) if found.base_of_dependents.is_some() => {
                let why = reasons
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Ok(PushOutcome::Unusable(format!(
                    "its inputs match a stored version, but {why}"
                )));
            }
            Outcome::Miss(reasons) => return Ok(PushOutcome::Skipped(reasons)),
        };
        let Some(layout) = self.cache.config.oci_layout.clone() else {
            return Ok(PushOutcome::Failed(RemoteFailure::NoLayout {
                layer: layer.to_string(),
            }));
        };
        let input_digest = entry.record.input_digest;
        match remote.existing_entry(layer, &input_digest) {
            Ok(Some(there)) => return Ok(PushOutcome::AlreadyThere { tag: there.tag }),
            Ok(None) => {}
            // An entry that does not check out is replaced by this one.
            Err(RemoteError::Untrusted { .. }) => {}
            Err(e) => return Ok(PushOutcome::Failed(e.into())),
        }
        let record = share::encode(&entry.record).map_err(|e| Error::Corrupt {
            path: self.cache.store.path().to_path_buf(),
            table: "entries",
            key: layer.to_string(),
            detail: format!("a stored output descriptor is not JSON ({e})"),
        })?;
        let blobs = match output_blobs(&layout, &entry.manifests) {
            Ok(b) => b,
            Err(why) => return Ok(PushOutcome::Unusable(why)),
        };
        let pushed = remote.push_entry(&RemoteEntry {
            layer: layer.to_string(),
            input_digest,
            record,
            blobs,
        });
        Ok(match pushed {
            Ok(report) => PushOutcome::Pushed(report),
            // Reading our own blobs, or one that no longer matches its descriptor: local.
            Err(e @ (RemoteError::Io { .. } | RemoteError::InvalidEntry { .. })) => {
                PushOutcome::Unusable(e.to_string())
            }
            Err(e) => PushOutcome::Failed(e.into()),
        })
    }
}

/// The local answer, with what its lookup saw (for a record; never copied: a walk log can be
/// tens of MB).
fn local_answer(
    local: BuildLookup,
    answer: RemoteAnswer,
    failure: Option<RemoteFailure>,
) -> RemoteLookup {
    RemoteLookup {
        lookup: local.lookup,
        source: None,
        answer,
        fetched: None,
        failure,
        seen: local.seen,
        result: local.result,
        record_key: local.record_key,
    }
}

/// What a lookup asks a registry for: an entry of `layer` with this machine's input digest.
struct Asked<'a> {
    layer: &'a str,
    digest: [u8; 32],
    hex: String,
}

/// Why an entry was not taken: what to tell about the registry, and the failure to report.
struct Refusal {
    answer: RemoteAnswer,
    failure: Option<RemoteFailure>,
}

impl Asked<'_> {
    fn refused(&self, why: String) -> RemoteAnswer {
        RemoteAnswer::Refused {
            input_digest: self.hex.clone(),
            why,
        }
    }

    /// A registry error: an entry that is untrusted or a blob that did not verify was refused;
    /// anything else is the registry being unreachable.
    fn failed(&self, e: RemoteError) -> Box<Refusal> {
        let why = e.to_string();
        let answer = match e {
            RemoteError::Untrusted { .. } | RemoteError::BlobMismatch { .. } => self.refused(why),
            _ => RemoteAnswer::Unreachable {
                input_digest: self.hex.clone(),
                why,
            },
        };
        Box::new(Refusal {
            answer,
            failure: Some(RemoteFailure::Registry(e)),
        })
    }

    /// Finds the entry, checks its record against what was asked, fetches its blobs into
    /// `layout` (verified), and checks that every blob its outputs reach is there. Writes
    /// nothing to the cache.
    fn fetch(
        &self,
        remote: &Remote,
        layout: &std::path::Path,
    ) -> std::result::Result<(BTreeMap<String, Descriptor>, FetchReport), Box<Refusal>> {
        let found = match remote.find_entry(self.layer, &self.digest) {
            Ok(Some(f)) => f,
            Ok(None) => {
                let answer = RemoteAnswer::NoEntry {
                    input_digest: self.hex.clone(),
                };
                return Err(Box::new(Refusal {
                    answer,
                    failure: None,
                }));
            }
            Err(e) => return Err(self.failed(e)),
        };
        let manifests = share::accept(&found, self.layer, &self.digest).map_err(|e| {
            Box::new(Refusal {
                answer: self.refused(e.to_string()),
                failure: Some(e.into()),
            })
        })?;
        let fetched = remote
            .fetch_blobs(&found, layout)
            .map_err(|e| self.failed(e))?;
        // Nothing is recorded unless every blob its outputs reach is here now: an entry that
        // carries a manifest but not its layers is refused.
        for (layer_type, d) in &manifests {
            if let Err(why) = outputs::reached(layout, d) {
                let e = RecordError::Mismatch {
                    layer: self.layer.to_string(),
                    input_digest: self.hex.clone(),
                    detail: format!(
                        "it does not carry every blob its output {} reaches (or this layout \
                         holds a wrong copy of one): {why}",
                        crate::path::escape_bytes(layer_type.as_bytes())
                    ),
                };
                return Err(Box::new(Refusal {
                    answer: self.refused(e.to_string()),
                    failure: Some(e.into()),
                }));
            }
        }
        Ok((manifests, fetched))
    }
}

/// A local miss with the registry's verdict added when the entry found was not trusted
/// ([`MissReason::RemoteUntrusted`], after the local reasons); any other lookup as it is.
fn untrusted_miss(mut lookup: Lookup, remote: &Remote, e: &RemoteError) -> Lookup {
    if let (RemoteError::NotTrusted { why, .. }, Outcome::Miss(reasons)) = (e, &mut lookup.outcome)
    {
        reasons.push(MissReason::RemoteUntrusted {
            remote: format!("{}/{}", remote.registry(), remote.repository()),
            why: why.kind().to_string(),
            detail: why.to_string(),
        });
    }
    lookup
}

/// Every blob the output manifests reach in `layout` (the outputs rule's
/// [`outputs::reached`]), each once, in manifest order.
fn output_blobs(
    layout: &std::path::Path,
    manifests: &BTreeMap<String, Descriptor>,
) -> std::result::Result<Vec<LocalBlob>, String> {
    let mut out: Vec<LocalBlob> = Vec::new();
    for (layer_type, d) in manifests {
        let reached = outputs::reached(layout, d).map_err(|problem| {
            format!(
                "output {}: {problem}",
                crate::path::escape_bytes(layer_type.as_bytes())
            )
        })?;
        for b in reached {
            if !out
                .iter()
                .any(|o| o.descriptor.digest() == b.descriptor.digest())
            {
                out.push(LocalBlob {
                    descriptor: b.descriptor,
                    path: b.path,
                });
            }
        }
    }
    Ok(out)
}
