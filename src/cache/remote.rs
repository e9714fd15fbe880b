//! Lookup and push through a registry: a local miss asks the registry for an entry with the
//! layer's input digest; a local hit can be pushed.
//!
//! Owns: [`Session::lookup_remote`] and [`Session::push_layer`], and the order of a remote
//! hit: the local lookup's walk gives the input digest (no second walk) → find → check the record
//! ([`crate::share::accept`]) → fetch the blobs into the local OCI layout (verified, atomic:
//! [`crate::remote::Remote::fetch_blobs`]) → record the layer with a put of **this machine's**
//! walk → check that what was recorded has the digest asked for.
//!
//! Must never: fail a lookup because of the registry (a registry that is down, slow, refuses
//! or serves something wrong gives the local answer and a [`RemoteFailure`] for the caller to
//! report once), record anything from a remote entry but its output manifests, or record a
//! layer whose blobs are not all in the local layout.

use std::collections::BTreeMap;

use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::reason::MissReason;
use crate::remote::{FetchReport, LocalBlob, PushReport, Remote, RemoteEntry, RemoteError};
use crate::share::{self, RecordError};

use super::{CachedEntry, Lookup, LookupMode, Outcome, Session};

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

/// The result of [`Session::lookup_remote`].
#[derive(Debug)]
pub struct RemoteLookup {
    /// The answer: a hit (local, or recorded from the registry) or the local miss.
    pub lookup: Lookup,
    /// Where the hit came from; `None` on a miss.
    pub source: Option<HitSource>,
    /// The blobs fetched for a remote hit.
    pub fetched: Option<FetchReport>,
    /// Why the registry could not help, when it was asked and failed.
    pub failure: Option<RemoteFailure>,
}

/// What [`Session::push_layer`] did for one layer.
#[derive(Debug)]
pub enum PushOutcome {
    /// The entry was pushed.
    Pushed(PushReport),
    /// The registry already has an entry for this layer and input digest.
    AlreadyThere {
        /// Its tag.
        tag: String,
    },
    /// The layer misses locally: nothing to push.
    Skipped(Vec<MissReason>),
    /// The registry could not take it.
    Failed(RemoteFailure),
}

impl Session<'_> {
    /// Looks up `layer` locally (observing its inputs, as [`Session::lookup`] does) and, on a
    /// miss, asks `remote` for an entry with the layer's input digest. A remote hit fetches the
    /// entry's blobs into the cache's OCI layout, records the layer from this machine's walk
    /// with the entry's output manifests, and answers a hit with [`HitSource::Remote`]. Errors
    /// are local errors only; anything the registry does wrong is in
    /// [`RemoteLookup::failure`] next to the local answer.
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
        let answer = |lookup, failure| RemoteLookup {
            lookup,
            source: None,
            fetched: None,
            failure,
        };
        if local.is_hit() {
            return Ok(RemoteLookup {
                lookup: local.into_lookup(),
                source: Some(HitSource::Local),
                fetched: None,
                failure: None,
            });
        }
        let Some(layout) = self.cache.config.oci_layout.clone() else {
            let failure = RemoteFailure::NoLayout {
                layer: layer.to_string(),
            };
            return Ok(answer(local.into_lookup(), Some(failure)));
        };
        // What the local lookup walked (it observed every source): no second walk.
        let Some(asked) = local.input_digest else {
            return Ok(answer(local.into_lookup(), None));
        };
        let found = match remote.find_entry(layer, &asked) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(answer(local.into_lookup(), None)),
            Err(e) => {
                let lookup = untrusted_miss(local.into_lookup(), remote, &e);
                return Ok(answer(lookup, Some(e.into())));
            }
        };
        let manifests = match share::accept(&found, layer, &asked) {
            Ok(m) => m,
            Err(e) => return Ok(answer(local.into_lookup(), Some(e.into()))),
        };
        let fetched = match remote.fetch_blobs(&found, &layout) {
            Ok(r) => r,
            Err(e) => return Ok(answer(local.into_lookup(), Some(e.into()))),
        };
        let record = match self.put(&local, &manifests) {
            Ok(r) => r,
            Err(Error::InputsChanged { layer, changes }) => {
                let detail = format!(
                    "its inputs changed: {}",
                    crate::reason::PutChange::join(&changes)
                );
                let failure = RemoteFailure::InputsChanged { layer, detail };
                return Ok(answer(local.into_lookup(), Some(failure)));
            }
            Err(e) => return Err(e),
        };
        if record.input_digest != asked {
            // The inputs changed between the digest's walk and the put's: what was recorded is
            // not what the registry's entry was for.
            self.cache.remove_version(layer, &record.input_digest)?;
            self.memo.remove(layer);
            self.forget_dependents_of(layer);
            let failure = RemoteFailure::InputsChanged {
                layer: layer.to_string(),
                detail: "its inputs changed while it was pulled".into(),
            };
            return Ok(answer(local.into_lookup(), Some(failure)));
        }
        let lookup = Lookup {
            layer: layer.to_string(),
            outcome: Outcome::Hit(Box::new(CachedEntry { record, manifests })),
            lying_rows: Vec::new(),
            base_of_dependents: None,
            input_digest: Some(asked),
        };
        Ok(RemoteLookup {
            lookup,
            source: Some(HitSource::Remote),
            fetched: Some(fetched),
            failure: None,
        })
    }

    /// Pushes `layer` to `remote` when it hits locally: its wire record
    /// ([`crate::share::SharedRecord`]) and, for each output manifest, the image's blobs
    /// (manifest, config, layers) from the cache's OCI layout. An entry the registry already
    /// has for this layer and input digest is not pushed again.
    pub fn push_layer(&mut self, layer: &str, remote: &Remote) -> Result<PushOutcome> {
        let found = self.lookup_with(layer, LookupMode::CHECK)?;
        let entry = match found.outcome {
            Outcome::Hit(e) => e,
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
            Err(e) => return Ok(PushOutcome::Failed(e.into())),
        };
        let pushed = remote.push_entry(&RemoteEntry {
            layer: layer.to_string(),
            input_digest,
            record,
            blobs,
        });
        Ok(match pushed {
            Ok(report) => PushOutcome::Pushed(report),
            Err(e) => PushOutcome::Failed(e.into()),
        })
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

/// The blobs of every output manifest in `layout`, each once.
fn output_blobs(
    layout: &std::path::Path,
    manifests: &BTreeMap<String, Descriptor>,
) -> std::result::Result<Vec<LocalBlob>, RemoteError> {
    let mut out: Vec<LocalBlob> = Vec::new();
    for d in manifests.values() {
        for b in crate::remote::image_blobs(layout, d)? {
            if !out
                .iter()
                .any(|o| o.descriptor.digest() == b.descriptor.digest())
            {
                out.push(b);
            }
        }
    }
    Ok(out)
}
