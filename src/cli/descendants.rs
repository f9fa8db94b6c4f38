//! The descendants of a process, found by a walk of `/proc` (Linux): azmutex is a subreaper, so
//! every process its command starts stays its descendant, even after `setsid` or a double fork.
//! The walk is async-signal-safe (raw syscalls, stack buffers, no allocation but in the caller's
//! table), so that the watchdog can use it after fork.

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct ProcEntry {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Its parent's pid.
    pub ppid: libc::pid_t,
    /// Whether it has exited and waits to be reaped.
    pub zombie: bool,
    /// Whether the walk found it to descend from the root.
    pub mark: bool,
}

/// Calls `each` for every process listed in `/proc`. Async-signal-safe (raw syscalls, stack
/// buffers, no allocation), so that the watchdog can use it after fork.
fn scan_proc(mut each: impl FnMut(ProcEntry)) {
    #[cfg(target_os = "linux")]
    // SAFETY: open/getdents64/read/close on buffers owned here; the records are parsed within
    // the byte count the kernel returned.
    unsafe {
        let dir = libc::open(c"/proc".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return;
        }
        // A failed read ends the scan: what was seen so far is all there is.
        let _ = each_numbered_entry(dir, |pid| {
            if let Some(entry) = read_stat(pid) {
                each(entry);
            }
            true
        });
        libc::close(dir);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = &mut each;
}

/// Calls `each` with every entry of the open directory `dir` whose name is a number (the pids
/// in `/proc`, the thread ids in `/proc/<pid>/task`), until `each` says stop. Async-signal-safe
/// (`getdents64` into a stack buffer). `false` when a read failed or `each` said stop.
///
/// # Safety
/// `dir` must be an open directory descriptor.
#[cfg(target_os = "linux")]
unsafe fn each_numbered_entry(dir: libc::c_int, mut each: impl FnMut(libc::pid_t) -> bool) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: getdents64 into a buffer owned here, of the length given.
        let got = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if got < 0 {
            return false;
        }
        if got == 0 {
            return true;
        }
        let got = got as usize;
        let mut off = 0;
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }, parsed
        // within the byte count the kernel returned.
        while off + 19 < got {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > got {
                break;
            }
            if let Some(n) = parse_pid(&buf[off + 19..off + reclen]) {
                if !each(n) {
                    return false;
                }
            }
            off += reclen;
        }
    }
}

/// A NUL-terminated all-digit name as a pid.
fn parse_pid(name: &[u8]) -> Option<libc::pid_t> {
    let mut pid: libc::pid_t = 0;
    let mut digits = 0;
    for &b in name {
        match b {
            0 => break,
            b'0'..=b'9' => {
                pid = pid.checked_mul(10)?.checked_add((b - b'0') as libc::pid_t)?;
                digits += 1;
            }
            _ => return None,
        }
    }
    (digits > 0 && pid > 0).then_some(pid)
}

/// Reads `/proc/<pid>/stat`: parent and state. Async-signal-safe.
fn read_stat(pid: libc::pid_t) -> Option<ProcEntry> {
    let mut path = [0u8; 32];
    let mut len = 0;
    for &b in b"/proc/" {
        path[len] = b;
        len += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut n = pid;
    while n > 0 && d < digits.len() {
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        d += 1;
    }
    while d > 0 {
        d -= 1;
        path[len] = digits[d];
        len += 1;
    }
    for &b in b"/stat\0" {
        path[len] = b;
        len += 1;
    }
    let mut buf = [0u8; 512];
    // SAFETY: `path` is NUL-terminated; read into a buffer we own.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return None;
    }
    let text = &buf[..n as usize];
    // `pid (comm) S ppid ...`: the state follows the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let state = *text.get(close + 2)?;
    let mut ppid: libc::pid_t = 0;
    let mut seen = false;
    for &b in text.get(close + 4..)? {
        match b {
            b'0'..=b'9' => {
                ppid = ppid.checked_mul(10)?.checked_add((b - b'0') as libc::pid_t)?;
                seen = true;
            }
            _ => break,
        }
    }
    seen.then_some(ProcEntry {
        pid,
        ppid,
        zombie: state == b'Z' || state == b'X',
        mark: false,
    })
}

/// Marks in `table` every process that descends from `root`, leaving out `exclude` and what
/// descends from it. Allocation-free (the table is sorted by pid in place). Returns how many
/// are marked.
///
/// Each pass marks one more generation, finding each parent by binary search: O(n log n) a
/// pass, and as many passes as the tree is deep. (A linear search for each parent made a walk
/// of 29,000 processes take seconds, during which a lost lock's command was not killed.)
pub(super) fn mark_descendants(table: &mut [ProcEntry], root: libc::pid_t, exclude: libc::pid_t) -> usize {
    table.sort_unstable_by_key(|e| e.pid);
    let mut marked = 0;
    for e in table.iter_mut() {
        e.mark = e.ppid == root && e.pid != exclude && e.pid != root;
        marked += usize::from(e.mark);
    }
    // Stops when a pass marks nothing.
    loop {
        let mut more = 0;
        for i in 0..table.len() {
            if table[i].mark || table[i].pid == exclude || table[i].pid == root {
                continue;
            }
            let parent = table[i].ppid;
            let parent_marked = table
                .binary_search_by_key(&parent, |e| e.pid)
                .is_ok_and(|at| table[at].mark);
            if parent_marked {
                table[i].mark = true;
                more += 1;
            }
        }
        if more == 0 {
            return marked;
        }
        marked += more;
    }
}

/// A path under `/proc` built without allocation: `/proc/<pid>/task[/<tid>/children]`,
/// NUL-terminated.
struct ProcPath {
    buf: [u8; 64],
    len: usize,
}

impl ProcPath {
    fn new() -> Self {
        let mut p = Self { buf: [0; 64], len: 0 };
        p.push(b"/proc/");
        p
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // Leave room for the NUL; the longest path used here is far shorter.
            if self.len + 1 < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: libc::pid_t) {
        let mut digits = [0u8; 12];
        let mut d = 0;
        while n > 0 && d < digits.len() {
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            d += 1;
        }
        while d > 0 {
            d -= 1;
            self.push(&[digits[d]]);
        }
    }

    fn c_str(&mut self) -> *const libc::c_char {
        self.buf[self.len] = 0;
        self.buf.as_ptr().cast()
    }
}

/// Calls `each` with every child of `pid`, from the `children` file of each of its threads.
/// Async-signal-safe. `false` when a file could not be read (no `CONFIG_PROC_CHILDREN`, or the
/// process or a thread went away meanwhile) or `each` said stop.
fn each_child(pid: libc::pid_t, mut each: impl FnMut(libc::pid_t) -> bool) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: open/getdents64/read/close on buffers owned here; the records are parsed within
    // the byte count the kernel returned.
    unsafe {
        let mut dir_path = ProcPath::new();
        dir_path.number(pid);
        dir_path.push(b"/task");
        let dir = libc::open(dir_path.c_str(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if dir < 0 {
            return false;
        }
        let mut threads = 0;
        let ok = each_numbered_entry(dir, |tid| {
            threads += 1;
            let mut path = ProcPath::new();
            path.number(pid);
            path.push(b"/task/");
            path.number(tid);
            path.push(b"/children");
            read_pids(path.c_str(), &mut each)
        });
        libc::close(dir);
        ok && threads > 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, &mut each);
        false
    }
}

/// Reads a file of space-separated pids (a `children` file), calling `each` for each.
/// Async-signal-safe. `false` if it could not be read or `each` said stop.
#[cfg(target_os = "linux")]
fn read_pids(path: *const libc::c_char, each: &mut impl FnMut(libc::pid_t) -> bool) -> bool {
    // SAFETY: `path` is NUL-terminated; reads go into a buffer we own.
    unsafe {
        let fd = libc::open(path, libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let mut buf = [0u8; 1024];
        let mut pid: libc::pid_t = 0;
        let mut digits = false;
        let mut ok = true;
        'read: loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                ok = false;
                break;
            }
            // The end flushes the last number.
            let text: &[u8] = if n == 0 { b" " } else { &buf[..n as usize] };
            for &b in text {
                if b.is_ascii_digit() {
                    match pid
                        .checked_mul(10)
                        .and_then(|p| p.checked_add((b - b'0') as libc::pid_t))
                    {
                        Some(p) => pid = p,
                        None => {
                            ok = false;
                            break 'read;
                        }
                    }
                    digits = true;
                } else {
                    if digits && !each(pid) {
                        ok = false;
                        break 'read;
                    }
                    pid = 0;
                    digits = false;
                }
            }
            if n == 0 {
                break;
            }
        }
        libc::close(fd);
        ok
    }
}

/// Fills `table` with the descendants of `root` but `exclude` (and what descends from it), all
/// marked, found through the `children` files of each one's threads: as many reads as there
/// are descendants, not one per process on the host. Async-signal-safe (the watchdog uses it).
/// `None` when a `children` file cannot be read (no `CONFIG_PROC_CHILDREN`, or a descendant
/// exited during the walk, so that its children may have moved to one already read) or the
/// table is full: then walk all of `/proc` ([`fill`] and [`mark_descendants`]).
pub(super) fn fill_subtree(table: &mut [ProcEntry], root: libc::pid_t, exclude: libc::pid_t) -> Option<usize> {
    match subtree(table, root, exclude) {
        (n, true) => Some(n),
        (_, false) => None,
    }
}

/// [`fill_subtree`]'s walk: how many descendants it put in `table`, and whether that is all of
/// them (`false`: see [`fill_subtree`]; those found are descendants still).
fn subtree(table: &mut [ProcEntry], root: libc::pid_t, exclude: libc::pid_t) -> (usize, bool) {
    let mut n = 0;
    let mut next = 0;
    let mut parent = root;
    loop {
        let mut full = false;
        let ok = each_child(parent, |child| {
            if child == exclude || child == root || table[..n].iter().any(|e| e.pid == child) {
                return true;
            }
            if n == table.len() {
                full = true;
                return false;
            }
            match read_stat(child) {
                Some(mut e) => {
                    e.mark = true;
                    table[n] = e;
                    n += 1;
                    true
                }
                // Gone between the two reads: its children may have moved elsewhere.
                None => false,
            }
        });
        if !ok || full {
            return (n, false);
        }
        if next == n {
            return (n, true);
        }
        parent = table[next].pid;
        next += 1;
    }
}

/// Sends `sig` to the living descendants of `root` but `exclude` that the `children` files
/// show (as many reads as there are descendants, at most `table.len()` of them), whether or not
/// that walk saw them all: so that a signal lands at once on a host with tens of thousands of
/// processes, before the walk of all of `/proc` that must follow to find the rest. Async-signal-
/// safe (the watchdog uses it).
pub(super) fn signal_subtree(table: &mut [ProcEntry], root: libc::pid_t, exclude: libc::pid_t, sig: libc::c_int) {
    let (n, _) = subtree(table, root, exclude);
    for e in &table[..n] {
        if !e.zombie {
            // SAFETY: kill(2) on a descendant of `root`, just found in its parent's children.
            unsafe { libc::kill(e.pid, sig) };
        }
    }
}

/// Every living or zombie descendant of `root` but `exclude` (and what descends from it).
pub(super) fn descendants(
    table: &mut Vec<ProcEntry>,
    root: libc::pid_t,
    exclude: libc::pid_t,
) -> impl Iterator<Item = &ProcEntry> {
    table.clear();
    scan_proc(|e| table.push(e));
    mark_descendants(table, root, exclude);
    table.iter().filter(|e| e.mark)
}

/// Sends `sig` to every living descendant of `root` but `exclude`; returns how many it signalled.
pub(super) fn signal_descendants(
    table: &mut Vec<ProcEntry>,
    root: libc::pid_t,
    exclude: libc::pid_t,
    sig: libc::c_int,
) -> usize {
    let mut n = 0;
    for e in descendants(table, root, exclude) {
        if !e.zombie {
            // SAFETY: kill(2) on a descendant of ours.
            unsafe { libc::kill(e.pid, sig) };
            n += 1;
        }
    }
    n
}

/// [`signal_descendants`] on a fixed table (the watchdog's: no allocation after fork).
pub(super) fn signal_descendants_in(
    table: &mut [ProcEntry],
    root: libc::pid_t,
    exclude: libc::pid_t,
    sig: libc::c_int,
) {
    let n = fill(table);
    mark_descendants(&mut table[..n], root, exclude);
    for e in &table[..n] {
        if e.mark && !e.zombie {
            // SAFETY: kill(2) on a descendant of azmutex.
            unsafe { libc::kill(e.pid, sig) };
        }
    }
}

/// The children of this process (all its threads' `/proc/self/task/<tid>/children`), with
/// their state, but `exclude`: the few files a subreaper needs to see that nothing is left,
/// instead of a walk of all of `/proc`. `None` when the kernel has no `children` files
/// (`CONFIG_PROC_CHILDREN`) or one could not be read: the caller then walks `/proc`.
///
/// Orphans are reparented to a subreaper, so once the command itself has been waited for, a
/// descendant that is still running or unreaped has an ancestor among these.
pub(super) fn own_children(exclude: libc::pid_t) -> Option<Vec<ProcEntry>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?;
        let text = std::fs::read_to_string(task.path().join("children")).ok()?;
        pids.extend(parse_children(&text)?);
    }
    pids.sort_unstable();
    pids.dedup();
    let mut found = Vec::with_capacity(pids.len());
    for pid in pids.into_iter().filter(|&p| p != exclude) {
        match read_stat(pid) {
            Some(e) => found.push(e),
            // Gone since (reaped by someone else, which only a waitpid of ours can do): still
            // report it, as a living child, so that the caller looks closer.
            None => found.push(ProcEntry {
                pid,
                ppid: 0,
                zombie: false,
                mark: false,
            }),
        }
    }
    Some(found)
}

/// The pids of a `children` file: decimal numbers separated by spaces. `None` if anything else.
fn parse_children(text: &str) -> Option<Vec<libc::pid_t>> {
    text.split_ascii_whitespace()
        .map(|p| p.parse::<libc::pid_t>().ok().filter(|&p| p > 0))
        .collect()
}

/// Fills `table` from `/proc` (as much as fits); returns how many entries it holds.
pub(super) fn fill(table: &mut [ProcEntry]) -> usize {
    let mut n = 0;
    scan_proc(|e| {
        if n < table.len() {
            table[n] = e;
            n += 1;
        }
    });
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: libc::pid_t, ppid: libc::pid_t) -> ProcEntry {
        ProcEntry {
            pid,
            ppid,
            zombie: false,
            mark: false,
        }
    }

    #[test]
    fn descendants_are_found_through_every_generation_but_the_excluded_branch() {
        // 10 is azmutex; 11 the watchdog (with a child 12); 20 the command, 21 its child,
        // 22 a grandchild that left the group; 30 someone else's.
        let mut table = vec![
            entry(22, 21),
            entry(10, 1),
            entry(11, 10),
            entry(12, 11),
            entry(20, 10),
            entry(21, 20),
            entry(30, 1),
        ];
        assert_eq!(mark_descendants(&mut table, 10, 11), 3);
        let mut found: Vec<_> = table.iter().filter(|e| e.mark).map(|e| e.pid).collect();
        found.sort();
        assert_eq!(found, [20, 21, 22]);
    }

    /// A busy host's table (100,000 processes, most of them someone else's) with azmutex's
    /// descendants spread through it, pids out of order (wrapped): every descendant marked, the
    /// excluded branch and the strangers not. With a linear search for each parent (before
    /// issue 23's review) this table took minutes; a walk of 29,000 processes took seconds.
    #[test]
    fn a_busy_hosts_table_is_marked_by_generations() {
        let (root, exclude) = (500_000, 500_001);
        let mut table: Vec<ProcEntry> = (1..=100_000).map(|pid| entry(pid, (pid / 7).max(1))).collect();
        table.push(entry(root, 1));
        table.push(entry(exclude, root));
        table.push(entry(600_000, exclude)); // the excluded branch
                                             // A chain of 20 generations under root, each child's pid below its parent's (pids wrap),
                                             // and a second child at each level.
        let mut parent = root;
        let mut expected = Vec::new();
        for g in 0..20 {
            let child = 400_000 - g * 10;
            table.push(entry(child, parent));
            table.push(entry(700_000 + g, parent));
            expected.extend([child, 700_000 + g]);
            parent = child;
        }
        // Shuffled: the walk's order is the kernel's, not ours.
        let len = table.len();
        for i in 0..len {
            table.swap(i, (i * 7919) % len);
        }
        assert_eq!(mark_descendants(&mut table, root, exclude), expected.len());
        let mut found: Vec<_> = table.iter().filter(|e| e.mark).map(|e| e.pid).collect();
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn proc_names_and_stat_lines_parse() {
        assert_eq!(parse_pid(b"1234\0"), Some(1234));
        assert_eq!(parse_pid(b"self\0"), None);
        assert_eq!(parse_pid(b"\0"), None);
        assert_eq!(parse_pid(b"99999999999999\0"), None);
        // SAFETY: getpid/getppid have no preconditions.
        let (me, parent) = unsafe { (libc::getpid(), libc::getppid()) };
        let e = read_stat(me).expect("our own stat");
        assert_eq!((e.pid, e.ppid, e.zombie), (me, parent, false));
        let mut all = Vec::new();
        scan_proc(|e| all.push(e.pid));
        assert!(all.contains(&me));
    }

    #[test]
    fn children_files_parse() {
        assert_eq!(parse_children(""), Some(vec![]));
        assert_eq!(parse_children("12 345 \n"), Some(vec![12, 345]));
        assert_eq!(parse_children("12 x"), None);
        assert_eq!(parse_children("0"), None);
    }

    /// `own_children(exclude)`, asked again while it says `None` because a thread of this test
    /// binary (other tests run beside this one) exited during the read: the callers then walk
    /// /proc instead, which is right, but this test is about what the files list.
    fn children_of_this_process(exclude: libc::pid_t) -> Vec<ProcEntry> {
        for _ in 0..1000 {
            if let Some(found) = own_children(exclude) {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("the children files could not be read in 1,000 tries");
    }

    /// The children files see what the full walk sees: a child started from any thread, with
    /// its state, and nothing once it is reaped.
    #[test]
    fn own_children_lists_a_child_until_it_is_reaped() {
        if !std::path::Path::new("/proc/self/task").exists() {
            return;
        }
        let me = std::process::id();
        let children = std::fs::read_to_string(format!("/proc/self/task/{me}/children"));
        if children.is_err() {
            // No CONFIG_PROC_CHILDREN: own_children says so and the callers walk /proc.
            assert!(own_children(0).is_none());
            return;
        }
        // Started from another thread: listed in that thread's file.
        let mut child = std::thread::spawn(|| std::process::Command::new("sleep").arg("30").spawn().expect("sleep"))
            .join()
            .expect("thread");
        let pid = child.id() as libc::pid_t;
        let found = children_of_this_process(0);
        assert!(
            found.iter().any(|e| e.pid == pid && !e.zombie),
            "{pid} not in {found:?}"
        );
        assert!(children_of_this_process(pid).iter().all(|e| e.pid != pid));
        let _ = child.kill();
        // Killed, not yet reaped: a zombie child.
        let mut zombie = false;
        for _ in 0..100 {
            let found = children_of_this_process(0);
            if found.iter().any(|e| e.pid == pid && e.zombie) {
                zombie = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(zombie, "{pid} never showed as a zombie child");
        let _ = child.wait();
        assert!(children_of_this_process(0).iter().all(|e| e.pid != pid));
    }

    /// The walk through `children` files finds what the walk of all of /proc finds: every
    /// generation, also a child that left its group.
    #[test]
    fn the_subtree_walk_finds_every_generation() {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let mut table = vec![ProcEntry::default(); 4096];
        if !std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists() {
            // No CONFIG_PROC_CHILDREN: the callers walk /proc.
            assert!(fill_subtree(&mut table, me, 0).is_none());
            return;
        }
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & setsid sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let sh_pid = sh.id() as libc::pid_t;
        let mut full = Vec::new();
        let mut wanted = Vec::new();
        for _ in 0..200 {
            wanted = descendants(&mut full, me, 0)
                .filter(|e| e.ppid == sh_pid || e.pid == sh_pid)
                .map(|e| e.pid)
                .collect::<Vec<_>>();
            if wanted.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut found = None;
        for _ in 0..20 {
            // Another test's child may exit during a walk (then: None); try again.
            if let Some(n) = fill_subtree(&mut table, me, 0) {
                found = Some(table[..n].iter().map(|e| e.pid).collect::<Vec<_>>());
                break;
            }
        }
        // SAFETY: killing the children of our own child, then it.
        unsafe {
            for &p in &wanted {
                if p != sh_pid {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert_eq!(wanted.len(), 3, "sh and its two sleeps: {wanted:?}");
        let found = found.expect("the subtree walk kept failing");
        for p in &wanted {
            assert!(
                found.contains(p),
                "{p} missing from {found:?} (the full walk found {wanted:?})"
            );
        }
        assert!(table.iter().take(found.len()).all(|e| e.mark));
        // The excluded branch is left out with what descends from it.
        let n = fill_subtree(&mut table, me, sh_pid).unwrap_or(0);
        assert!(table[..n].iter().all(|e| !wanted.contains(&e.pid)));
    }

    #[test]
    fn a_child_that_left_our_group_is_still_a_descendant() {
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .spawn()
            .expect("setsid");
        let pid = child.id() as libc::pid_t;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut table = Vec::new();
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let found = descendants(&mut table, me, 0).any(|e| e.pid == pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "the setsid child {pid} was not found");
    }
}
