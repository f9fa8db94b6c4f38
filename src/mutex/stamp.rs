//! The stamp after an acquire: the next fencing token and the holder record, written under the
//! new lease ([Set Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-properties)
//! for a page blob's sequence number, [Set Blob Metadata](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-metadata)
//! otherwise), and reading them back.

use super::*;

/// Metadata names this crate writes on a lock blob (lower-case letters only: they sort the same
/// under the service's collation and byte order).
pub(super) const META_FENCE: &str = "azmutexfence";
pub(super) const META_OWNER: &str = "azmutexowner";
pub(super) const META_HOST: &str = "azmutexhost";
pub(super) const META_PID: &str = "azmutexpid";
pub(super) const META_SINCE: &str = "azmutexsince";

impl AzureMutex {
    /// After an acquire: bumps the fencing token and/or records the holder, under our lease.
    /// `acquired_etag` is the ETag the acquire answer carried.
    ///
    /// `prefetched` is a Get Blob Properties answer sent beside the acquire (see
    /// [`AzureMutex::acquire_attempt`]). It stands in for the first read only when its ETag is
    /// the one the acquire answered with: lease operations leave the ETag alone and every write
    /// changes it, so the blob was not written between that read and our lease, and under the
    /// lease only we write. Every write made from it also carries `If-Match` with that ETag, so
    /// a stale read can only cost a 412 and a fresh read, never a token made from old state.
    pub(super) async fn stamp(
        &self,
        lock: &LockName,
        id: LeaseId,
        acquired_etag: Option<String>,
        prefetched: Option<RestResponse>,
        deadline: Instant,
    ) -> Result<Option<u64>, Error> {
        let fencing = self.inner.fencing;
        if fencing && self.inner.holder.is_none() {
            // Fast path: a page blob unchanged since our own last write to it (same ETag), so
            // its content headers and sequence number are known.
            if let Some(known) = acquired_etag
                .as_deref()
                .and_then(|etag| self.inner.pages.get(lock, etag))
            {
                let next = fence::next_token(lock, known.token, fence::MAX_SEQUENCE_NUMBER)?;
                let resp = self.advance(lock, id, next, &known.content, None, deadline).await?;
                match resp.status {
                    200 => match fence::advanced(lock, next, &resp)? {
                        fence::Advanced::To(token, etag) => {
                            if let Some(etag) = etag {
                                let known = fence::Known {
                                    etag,
                                    token: Some(token),
                                    ..known
                                };
                                self.inner.pages.remember(lock, known);
                            }
                            return Ok(Some(token));
                        }
                        // Someone wrote a larger number than we proposed: it may have been handed
                        // out already. Forget what we knew and take the slow path.
                        fence::Advanced::Overtaken(_) => self.inner.pages.forget(lock),
                    },
                    // Not a page blob any more (deleted and recreated), or changed: forget it.
                    400 | 409 | 412 if !fence::is_lease_error(&resp) => self.inner.pages.forget(lock),
                    _ => {
                        self.inner.pages.forget(lock);
                        return Err(self.classify(lock, &resp, Op::Write));
                    }
                }
            }
        }
        let mut prefetched = prefetched.filter(|head| {
            head.status == 200 && head.header("etag").is_some() && head.header("etag") == acquired_etag.as_deref()
        });
        for _ in 0..3 {
            // The prefetched read's ETag, when this round's read is that one: every write of
            // this round is then conditional on it.
            let (resp, condition) = match prefetched.take() {
                Some(head) => {
                    let etag = head.header("etag").map(str::to_string);
                    (head, etag)
                }
                None => (self.head(lock, deadline).await?, None),
            };
            if resp.status == 404 {
                return Err(Error::LeaseLost {
                    lock: lock.to_string(),
                    reason: LostReason::Deleted,
                    service: Some(resp.error()),
                });
            }
            let props = Props::from(&resp);
            let page = props.page;
            let mut metadata = props.metadata.clone();
            let mut etag = props.etag.clone();
            let mut token = None;
            if fencing && page {
                let content = fence::content_headers(&resp);
                let next = fence::next_token(lock, props.sequence_number, fence::MAX_SEQUENCE_NUMBER)?;
                let set = self
                    .advance(lock, id, next, &content, condition.as_deref(), deadline)
                    .await?;
                if set.status == 412 && condition.is_some() && set.error().is("ConditionNotMet") {
                    // The prefetched read was older than the blob: read it again.
                    continue;
                }
                if set.status != 200 {
                    return Err(self.classify(lock, &set, Op::Write));
                }
                let (n, new_etag) = match fence::advanced(lock, next, &set)? {
                    fence::Advanced::To(n, etag) => (n, etag),
                    // A larger number than ours was there already (written after our read): it
                    // may have been handed out. Read again and propose past it.
                    fence::Advanced::Overtaken(_) => {
                        self.inner.pages.forget(lock);
                        continue;
                    }
                };
                token = Some(n);
                if let (Some(new_etag), None) = (&new_etag, &self.inner.holder) {
                    let known = fence::Known {
                        etag: new_etag.clone(),
                        content,
                        token: Some(n),
                    };
                    self.inner.pages.remember(lock, known);
                }
                etag = new_etag.or(etag);
            } else if fencing {
                let n = fence::next_counter(lock, metadata.get(META_FENCE).map(String::as_str))?;
                metadata.insert(META_FENCE.into(), n.to_string());
                token = Some(n);
            }
            if let Some(holder) = &self.inner.holder {
                for k in [META_OWNER, META_HOST, META_PID] {
                    metadata.remove(k);
                }
                let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
                if let Some(o) = &holder.owner {
                    metadata.insert(META_OWNER.into(), enc(o));
                }
                if let Some(h) = &holder.host {
                    metadata.insert(META_HOST.into(), enc(h));
                }
                if let Some(p) = holder.pid {
                    metadata.insert(META_PID.into(), p.to_string());
                }
                let since = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                metadata.insert(META_SINCE.into(), since.to_string());
            } else if page || !fencing {
                return Ok(token); // fenced by the sequence number alone
            }
            match self
                .set_metadata(lock, id, &metadata, etag.as_deref(), deadline)
                .await?
            {
                true => return Ok(token),
                false => continue, // ETag moved (our own retried write, most likely): read again.
            }
        }
        Err(Error::Unexpected {
            service: ServiceError {
                status: 412,
                code: Some("ConditionNotMet".into()),
                request_id: None,
                message: None,
            },
            detail: "the lock blob kept changing while recording the fencing token/holder".into(),
        })
    }

    /// [Set Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-properties)
    /// with `x-ms-sequence-number-action: max` and `x-ms-blob-sequence-number: to`: one request,
    /// under our lease, idempotent when retried. This call sets every content header, clearing
    /// those it does not send: `content` carries the blob's current ones
    /// (`x-ms-blob-content-*` names) so that nothing is lost. With `if_match`, only while the
    /// blob's ETag is still that one (else 412 `ConditionNotMet`).
    pub(super) async fn advance(
        &self,
        lock: &LockName,
        id: LeaseId,
        to: u64,
        content: &[(&'static str, String)],
        if_match: Option<&str>,
        deadline: Instant,
    ) -> Result<RestResponse, Error> {
        let mut req = RestRequest::new(
            "fence",
            Method::PUT,
            self.inner.container.as_str(),
            Some(&self.blob(lock)?),
        )
        .query("comp", "properties")
        .header("x-ms-lease-id", id.to_string())
        .header("x-ms-sequence-number-action", "max")
        .header("x-ms-blob-sequence-number", to.to_string());
        if let Some(etag) = if_match {
            req = req.header("if-match", etag.to_string());
        }
        for (name, value) in content {
            req = req.header(name, value.clone());
        }
        self.inner.client.send(&req, deadline).await
    }

    /// [Set Blob Metadata](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-metadata)
    /// under our lease and `If-Match`. `Ok(false)` when the ETag no longer matches.
    pub(super) async fn set_metadata(
        &self,
        lock: &LockName,
        id: LeaseId,
        metadata: &BTreeMap<String, String>,
        etag: Option<&str>,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut req = RestRequest::new(
            "set-metadata",
            Method::PUT,
            self.inner.container.as_str(),
            Some(&self.blob(lock)?),
        )
        .query("comp", "metadata")
        .header("x-ms-lease-id", id.to_string());
        if let Some(etag) = etag {
            req = req.header("if-match", etag.to_string());
        }
        for (k, v) in metadata {
            // Props::from marks values it could not read faithfully (bytes that are not UTF-8)
            // with U+FFFD; writing them back would change them, so refuse instead.
            if v.contains(char::REPLACEMENT_CHARACTER) {
                return Err(Error::InvalidInput(InvalidInput::Option {
                    option: "lock blob metadata",
                    why: format!(
                        "the value of `{}` is not UTF-8 text, and recording the holder or fencing token \
                         rewrites all metadata: remove that item or use another lock blob",
                        crate::error::sanitize_text(k, 64)
                    ),
                }));
            }
            req = req.header_owned(&format!("x-ms-meta-{k}"), v.clone())?;
        }
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            200 => Ok(true),
            412 if resp.error().is("ConditionNotMet") => Ok(false),
            _ => Err(self.classify(lock, &resp, Op::Write)),
        }
    }
}

/// Blob properties this crate reads from a HEAD answer.
pub(super) struct Props {
    pub(super) page: bool,
    pub(super) sequence_number: Option<u64>,
    pub(super) metadata: BTreeMap<String, String>,
    pub(super) etag: Option<String>,
}

impl From<&RestResponse> for Props {
    fn from(resp: &RestResponse) -> Self {
        // Every item is kept, because Set Blob Metadata replaces the whole set: a value that is not
        // visible ASCII (Azurite stores UTF-8 bytes) is kept as UTF-8 text and sent back as the
        // same bytes; bytes that are not UTF-8 become U+FFFD, which `set_metadata` refuses to
        // write. Names arrive lower-cased (HTTP header names are case-insensitive, and so are
        // metadata names); they are written back lower-case.
        let metadata = resp
            .headers
            .iter()
            .filter_map(|(n, v)| {
                let name = n.as_str().strip_prefix("x-ms-meta-")?;
                Some((name.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            })
            .collect();
        Self {
            page: resp.header("x-ms-blob-type") == Some("PageBlob"),
            sequence_number: resp.header("x-ms-blob-sequence-number").and_then(|v| v.parse().ok()),
            metadata,
            etag: resp.header("etag").map(str::to_string),
        }
    }
}

impl Props {
    pub(super) fn fencing_token(&self) -> Option<u64> {
        if self.page {
            self.sequence_number
        } else {
            self.metadata.get(META_FENCE).and_then(|v| v.parse().ok())
        }
    }

    pub(super) fn holder(&self) -> Option<HolderInfo> {
        let dec = |k: &str| {
            self.metadata
                .get(k)
                .map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned())
        };
        let since = self
            .metadata
            .get(META_SINCE)
            .and_then(|v| v.parse::<u64>().ok())
            // Anyone who can write the blob's metadata sets this: never panic on it.
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        let holder = Holder {
            owner: dec(META_OWNER),
            host: dec(META_HOST),
            pid: self.metadata.get(META_PID).and_then(|v| v.parse().ok()),
        };
        (holder != Holder::default() || since.is_some()).then_some(HolderInfo { holder, since })
    }
}
