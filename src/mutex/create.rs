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
    /// lock blob with `If-None-Match: *`: never overwrites. A zero-length page blob when fencing
    /// (its sequence number is the token, seeded from the clock so that a deleted and recreated
    /// lock blob never hands out a token again), falling back to a block blob where page blobs
    /// are not supported.
    pub(super) async fn create_blob(&self, lock: &LockName, deadline: Instant) -> Result<(), Error> {
        let mut page = self.inner.fencing;
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
                400 | 409 if page => {
                    tracing::info!(lock = %lock, error = %err, "page blobs unsupported here: using a block blob");
                    page = false;
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
