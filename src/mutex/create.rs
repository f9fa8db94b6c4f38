//! Creating the container and the lock blob on demand (the first acquire of a lock).

use super::*;

impl AzureMutex {
    /// [Create Container](https://learn.microsoft.com/en-us/rest/api/storageservices/create-container);
    /// "already exists" is success.
    pub(super) async fn create_container(&self, deadline: Instant) -> Result<(), Error> {
        let req = RestRequest::new("create-container", Method::PUT, self.inner.container.as_str(), None)
            .query("restype", "container");
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            201 => {
                tracing::info!(container = %self.inner.container, "created container");
                Ok(())
            }
            409 if resp.error().is("ContainerAlreadyExists") => Ok(()),
            _ => Err(Error::Unexpected {
                service: resp.error(),
                detail: "creating the container".into(),
            }),
        }
    }

    /// [Put Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/put-blob) of an empty
    /// lock blob with `If-None-Match: *`: never overwrites. The kind that stamps an acquire in
    /// the fewest requests:
    /// - fencing without a holder record: a zero-length page blob. Its sequence number is the
    ///   token (seeded from the clock so that a deleted and recreated lock blob never hands out a
    ///   token again), set in one request that needs no read when the blob is unchanged since
    ///   this mutex's own last write;
    /// - a holder record (with or without fencing): a block blob. The token is then a metadata
    ///   counter (seeded from the clock as well), written in the same Set Blob Metadata as the
    ///   record: one write after the read instead of two (no Blob operation sets a sequence
    ///   number and metadata together).
    ///
    /// Either kind falls back to the other where the account refuses it (premium accounts hold
    /// only block blobs, or only page blobs). Every client handles both kinds, whoever made the
    /// blob.
    pub(super) async fn create_blob(&self, lock: &LockName, deadline: Instant) -> Result<(), Error> {
        let mut page = self.inner.fencing && self.inner.holder.is_none();
        let mut fell_back = false;
        loop {
            let mut req = RestRequest::new(
                "create-blob",
                Method::PUT,
                self.inner.container.as_str(),
                Some(&self.blob(lock)?),
            )
            .header("if-none-match", "*");
            req = if page {
                req.header("x-ms-blob-type", "PageBlob")
                    .header("x-ms-blob-content-length", "0")
                    .header("x-ms-blob-sequence-number", fence::clock_seed().to_string())
            } else {
                req.header("x-ms-blob-type", "BlockBlob")
            };
            let resp = self.inner.client.send(&req, deadline).await?;
            let err = resp.error();
            match resp.status {
                201 => {
                    if let (true, Some(etag)) = (page, resp.header("etag")) {
                        // Created by us: no content headers to keep; this ETag is the blob's
                        // until someone changes it.
                        let known = fence::Known {
                            etag: etag.to_string(),
                            content: Vec::new(),
                            token: None,
                        };
                        self.inner.pages.remember(lock, known);
                    }
                    tracing::debug!(lock = %lock, page, "created lock blob");
                    return Ok(());
                }
                // Someone else created it first (409 on a plain blob, 412 on a leased one on Azure).
                409 if err.is("BlobAlreadyExists") => return Ok(()),
                412 if err.is("LeaseIdMissing") || err.is("ConditionNotMet") => return Ok(()),
                404 => return Err(self.classify(lock, &resp, Op::Acquire)),
                400 | 409 if !fell_back => {
                    tracing::info!(
                        lock = %lock,
                        error = %err,
                        "{} blobs unsupported here: using a {} blob",
                        if page { "page" } else { "block" },
                        if page { "block" } else { "page" }
                    );
                    page = !page;
                    fell_back = true;
                }
                _ => {
                    return Err(Error::Unexpected {
                        service: err,
                        detail: "creating the lock blob".into(),
                    })
                }
            }
        }
    }
}
