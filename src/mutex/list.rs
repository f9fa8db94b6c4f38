//! [List Blobs](https://learn.microsoft.com/en-us/rest/api/storageservices/list-blobs) with
//! metadata: every blob under a prefix with its lease state, fencing token and holder record in
//! one request (up to 5,000 blobs a page), for coordination layers that watch many lock blobs
//! at once (a semaphore's slots). Plus the two plain blob writes they need for records that are
//! not locks: [Put Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/put-blob)
//! and [Delete Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/delete-blob).
//!
//! The answer is XML written by the server (or by whatever answers in its place): the body is
//! read up to [`MAX_LIST_BODY_BYTES`], at most [`MAX_LISTED`] blobs and [`MAX_LISTED_METADATA`]
//! metadata items per blob are kept, every text is cut to a bounded length, and an answer that
//! does not end with `</EnumerationResults>` (cut, or not a listing) is an error, never a
//! shorter list.

use super::*;

/// The most of a List Blobs answer read (bytes). A page of 5,000 blobs with a few metadata items
/// each is about 7 MiB on Azure; callers list short prefixes (a semaphore's at most 1,000 slots
/// and its waiters), well under this.
pub const MAX_LIST_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The most blobs kept from one page (the service's own page limit).
pub const MAX_LISTED: usize = 5000;

/// The most metadata items kept per listed blob.
pub const MAX_LISTED_METADATA: usize = 64;

/// The longest text kept from one element (characters): blob names are at most 1,024, metadata
/// values this crate writes are short.
const MAX_TEXT: usize = 2048;

/// One blob of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlob {
    /// The blob's name.
    pub name: String,
    /// Its lease state.
    pub state: LeaseState,
    /// Whether it is locked (`LeaseStatus` `locked`: leased or breaking).
    pub locked: bool,
    /// The last fencing token handed out on it (page blob sequence number or `azmutexfence`).
    pub fencing_token: Option<u64>,
    /// The holder recorded by the last acquire that recorded one, when locked.
    pub holder: Option<HolderInfo>,
    /// All its metadata (at most [`MAX_LISTED_METADATA`] items).
    pub metadata: BTreeMap<String, String>,
    /// Its ETag.
    pub etag: Option<String>,
}

/// One page of [`AzureMutex::list`].
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The blobs, in name order.
    pub blobs: Vec<ListedBlob>,
    /// Where the next page starts, if there is one.
    pub next_marker: Option<String>,
}

/// A blob as parsed, before it is checked.
#[derive(Default)]
struct Raw {
    name: Option<String>,
    props: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
}

impl AzureMutex {
    /// Lists the locks (and records) whose names start with `prefix` (one
    /// [List Blobs](https://learn.microsoft.com/en-us/rest/api/storageservices/list-blobs)
    /// request, `include=metadata`), from `marker` (a previous page's
    /// [`Listing::next_marker`]). A missing container is an empty listing. Page blobs that are
    /// not leased are remembered with their sequence number, so that an acquire right after
    /// hands out the next fencing token in one request (the ETag in the acquire's answer shows
    /// whether the blob changed since).
    ///
    /// Names are lock names. With [spread names](AzureMutexBuilder::spread_names) a prefix that
    /// holds a `/` (a semaphore's `name/`) is listed as one blob prefix; any other prefix is
    /// looked for among all the container's blobs, page by page, and blobs that are not this
    /// mutex's locks are left out.
    pub async fn list(&self, prefix: &str, marker: Option<&str>) -> Result<Listing, Error> {
        self.list_until(prefix, marker, self.inner.client.default_deadline())
            .await
    }

    /// [`AzureMutex::list`] with retries bounded by `deadline`.
    pub async fn list_until(&self, prefix: &str, marker: Option<&str>, deadline: Instant) -> Result<Listing, Error> {
        let mut req = RestRequest::new("list-blobs", Method::GET, self.inner.container.as_str(), None)
            .query("restype", "container")
            .query("comp", "list")
            // With spread names, lock names that share a whole first segment share a blob
            // prefix; other prefixes are looked for among all blobs.
            .query("prefix", self.blob_prefix(prefix).unwrap_or_default())
            .query("include", "metadata")
            .query("maxresults", MAX_LISTED.to_string())
            .max_body(MAX_LIST_BODY_BYTES);
        if let Some(m) = marker {
            req = req.query("marker", m);
        }
        let resp = self.inner.client.send(&req, deadline).await?;
        match resp.status {
            200 => {}
            404 => return Ok(Listing::default()),
            _ => {
                return Err(Error::Unexpected {
                    service: resp.error(),
                    detail: "listing blobs".into(),
                })
            }
        }
        let (raws, next_marker) = parse_listing(resp.body()).ok_or_else(|| Error::Unexpected {
            service: resp.error(),
            detail: "the List Blobs answer was cut or is not a listing".into(),
        })?;
        let mut blobs = Vec::with_capacity(raws.len());
        for raw in raws {
            // Lock names, not blob names (see `AzureMutexBuilder::spread_names`).
            let Some(name) = raw
                .name
                .as_deref()
                .and_then(|blob| self.lock_of_blob(blob))
                .filter(|name| name.starts_with(prefix))
                .map(str::to_string)
            else {
                continue;
            };
            let p = |k: &str| raw.props.get(k).map(String::as_str);
            let state = p("LeaseState")
                .and_then(LeaseState::parse)
                .unwrap_or(LeaseState::Available);
            let locked = p("LeaseStatus") == Some("locked");
            let props = Props {
                page: p("BlobType") == Some("PageBlob"),
                sequence_number: p("x-ms-blob-sequence-number").and_then(|v| v.trim().parse().ok()),
                metadata: raw.metadata,
                etag: p("Etag").map(str::to_string),
            };
            if self.inner.fencing && props.page && !locked {
                self.remember_listed(&name, &raw.props, &props);
            }
            blobs.push(ListedBlob {
                state,
                locked,
                fencing_token: props.fencing_token(),
                holder: if locked { props.holder() } else { None },
                name,
                etag: props.etag,
                metadata: props.metadata,
            });
        }
        Ok(Listing { blobs, next_marker })
    }

    /// Primes the page cache with a listed page blob (see [`AzureMutex::list`]).
    fn remember_listed(&self, name: &str, raw: &BTreeMap<String, String>, props: &Props) {
        let (Ok(lock), Some(etag), Some(seq)) = (LockName::new(name), &props.etag, props.sequence_number) else {
            return;
        };
        let content = [
            ("Content-Type", "x-ms-blob-content-type"),
            ("Content-Encoding", "x-ms-blob-content-encoding"),
            ("Content-Language", "x-ms-blob-content-language"),
            ("Content-Disposition", "x-ms-blob-content-disposition"),
            ("Cache-Control", "x-ms-blob-cache-control"),
            ("Content-MD5", "x-ms-blob-content-md5"),
        ]
        .into_iter()
        .filter_map(|(from, to)| {
            let v = raw.get(from)?.trim();
            // Only values that can go back as header values unchanged.
            (!v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))).then(|| (to, v.to_string()))
        })
        .collect();
        // Listings give the ETag bare (`0x8D…`), answers' headers quoted (`"0x8D…"`).
        let etag = if etag.starts_with('"') {
            etag.clone()
        } else {
            format!("\"{etag}\"")
        };
        let known = fence::Known {
            etag,
            content,
            token: Some(seq),
        };
        self.inner.pages.remember(&lock, known);
    }

    /// [Put Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/put-blob) of an empty
    /// block blob carrying `metadata` (names of `[a-z0-9]`, values printable ASCII): a record that
    /// is not a lock, such as a semaphore's manifest. With `create_only`, never overwrites
    /// (`If-None-Match: *`) and `Ok(false)` says the blob exists; otherwise it replaces the blob
    /// (refused while the blob is leased).
    pub async fn put_record(
        &self,
        name: &LockName,
        metadata: &BTreeMap<String, String>,
        create_only: bool,
    ) -> Result<bool, Error> {
        let deadline = self.inner.client.default_deadline();
        let mut req = RestRequest::new(
            "put-record",
            Method::PUT,
            self.inner.container.as_str(),
            Some(&self.blob(name)?),
        )
        .header("x-ms-blob-type", "BlockBlob");
        if create_only {
            req = req.header("if-none-match", "*");
        }
        for (k, v) in metadata {
            req = req.header_owned(&format!("x-ms-meta-{k}"), v.clone())?;
        }
        let mut created_container = false;
        loop {
            let resp = self.inner.client.send(&req, deadline).await?;
            let err = resp.error();
            match resp.status {
                201 => return Ok(true),
                409 if err.is("BlobAlreadyExists") => return Ok(false),
                412 if create_only && (err.is("LeaseIdMissing") || err.is("ConditionNotMet")) => return Ok(false),
                404 if err.is("ContainerNotFound") && self.inner.create_container && !created_container => {
                    self.create_container(deadline).await?;
                    created_container = true;
                }
                _ => return Err(self.classify(name, &resp, Op::Inspect)),
            }
        }
    }

    /// [Delete Blob](https://learn.microsoft.com/en-us/rest/api/storageservices/delete-blob) of a
    /// record written with [`AzureMutex::put_record`]; a missing blob is success. Refused
    /// (an error) while the blob is leased: locks are never deleted this way.
    pub async fn delete_record(&self, name: &LockName) -> Result<(), Error> {
        let req = RestRequest::new(
            "delete-record",
            Method::DELETE,
            self.inner.container.as_str(),
            Some(&self.blob(name)?),
        );
        let resp = self
            .inner
            .client
            .send(&req, self.inner.client.default_deadline())
            .await?;
        match resp.status {
            200..=299 | 404 => Ok(()),
            _ => Err(self.classify(name, &resp, Op::Inspect)),
        }
    }
}

/// Reads `<EnumerationResults><Blobs><Blob>…</Blob></Blobs><NextMarker/></EnumerationResults>`.
/// `None` when the document does not end properly (cut at the body limit, or not a listing).
fn parse_listing(body: &[u8]) -> Option<(Vec<Raw>, Option<String>)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut blobs = Vec::new();
    let mut blob: Option<Raw> = None;
    let mut next_marker = None;
    let mut text = String::new();
    let mut complete = false;
    let push = |text: &mut String, s: &str| {
        if text.len() < MAX_TEXT {
            let room = MAX_TEXT - text.len();
            let mut end = s.len().min(room);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            text.push_str(&s[..end]);
        }
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if path.len() >= 8 {
                    return None; // no listing nests this deep
                }
                let name = e.local_name().as_ref().to_vec();
                if path.len() == 2 && path[1] == b"Blobs" && name == b"Blob" {
                    blob = Some(Raw::default());
                }
                path.push(name);
                text.clear();
            }
            Ok(Event::Text(t)) => push(&mut text, &t.decode().unwrap_or_default()),
            Ok(Event::CData(t)) => push(&mut text, &t.decode().unwrap_or_default()),
            Ok(Event::GeneralRef(r)) => {
                let resolved = crate::rest::xml_entity(&r);
                if let Some(s) = resolved {
                    push(&mut text, &s);
                }
            }
            Ok(Event::End(_)) => {
                let name = path.pop()?;
                let parent = path.last().map(Vec::as_slice);
                let value = std::mem::take(&mut text);
                match (path.len(), parent, &mut blob) {
                    (0, _, _) if name == b"EnumerationResults" => complete = true,
                    (1, _, _) if name == b"NextMarker" => {
                        next_marker = Some(value.trim().to_string()).filter(|m| !m.is_empty());
                    }
                    (2, _, b) if name == b"Blob" => {
                        if let Some(b) = b.take() {
                            if blobs.len() >= MAX_LISTED {
                                return None;
                            }
                            blobs.push(b);
                        }
                    }
                    (3, _, Some(b)) if name == b"Name" => b.name = Some(value),
                    (4, Some(b"Properties"), Some(b)) => {
                        let key = String::from_utf8_lossy(&name).into_owned();
                        b.props.insert(key, value.trim().to_string());
                    }
                    (4, Some(b"Metadata"), Some(b)) if b.metadata.len() < MAX_LISTED_METADATA => {
                        // Metadata names are case-insensitive; they are kept lower-case as a
                        // HEAD answer's header names are.
                        let key = String::from_utf8_lossy(&name).to_ascii_lowercase();
                        b.metadata.insert(key, value);
                    }
                    _ => {}
                }
            }
            Ok(Event::Eof) => break,
            Err(_) => return None,
            _ => {}
        }
    }
    complete.then_some((blobs, next_marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1/devstoreaccount1" ContainerName="azmutex">
<Prefix>s/</Prefix><MaxResults>5000</MaxResults>
<Blobs>
<Blob><Name>s/slot-0000</Name><Properties><Etag>0x1</Etag><BlobType>PageBlob</BlobType>
<x-ms-blob-sequence-number>42</x-ms-blob-sequence-number><LeaseStatus>locked</LeaseStatus>
<LeaseState>leased</LeaseState></Properties>
<Metadata><AzmutexOwner>a&amp;b</AzmutexOwner></Metadata></Blob>
<Blob><Name>s/slot-0001</Name><Properties><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState></Properties></Blob>
</Blobs><NextMarker>m2</NextMarker></EnumerationResults>"#;

    #[test]
    fn reads_a_listing() {
        let (blobs, marker) = parse_listing(PAGE.as_bytes()).unwrap();
        assert_eq!(marker.as_deref(), Some("m2"));
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].name.as_deref(), Some("s/slot-0000"));
        assert_eq!(blobs[0].props["LeaseState"], "leased");
        assert_eq!(blobs[0].props["x-ms-blob-sequence-number"], "42");
        assert_eq!(blobs[0].metadata["azmutexowner"], "a&b");
        assert_eq!(blobs[1].props["LeaseStatus"], "unlocked");
    }

    #[test]
    fn refuses_cut_or_hostile_answers() {
        // Cut anywhere: never a shorter list.
        for end in [10, PAGE.len() / 2, PAGE.len() - 5] {
            assert!(parse_listing(&PAGE.as_bytes()[..end]).is_none(), "cut at {end}");
        }
        assert!(parse_listing(b"").is_none());
        assert!(parse_listing(b"<Error><Code>X</Code></Error>").is_none());
        // Deep nesting, too many blobs, huge texts: bounded.
        let deep = "<a>".repeat(100_000);
        assert!(parse_listing(deep.as_bytes()).is_none());
        let many = format!(
            "<EnumerationResults><Blobs>{}</Blobs></EnumerationResults>",
            "<Blob><Name>x</Name></Blob>".repeat(MAX_LISTED + 1)
        );
        assert!(parse_listing(many.as_bytes()).is_none());
        let long = format!(
            "<EnumerationResults><Blobs><Blob><Name>{}</Name><Metadata>{}</Metadata></Blob></Blobs></EnumerationResults>",
            "n".repeat(100_000),
            "<m>v</m>".repeat(1000)
        );
        let (blobs, _) = parse_listing(long.as_bytes()).unwrap();
        assert_eq!(blobs[0].name.as_ref().unwrap().len(), MAX_TEXT);
        assert!(blobs[0].metadata.len() <= MAX_LISTED_METADATA);
    }
}
