//! Reading a whole hash map in batches (`BPF_MAP_LOOKUP_BATCH`), which aya does not offer: a few
//! syscalls per thousand entries instead of two per entry, so recounting a flow table of a
//! million entries costs a fraction of a second rather than seconds.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per syscall.
const BATCH_ENTRIES: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `visit` with every entry of the hash map or array `map` (keys `K`, values `V`, which
/// must be the map's key and value sizes: checked). Entries added or removed meanwhile may or may
/// not be visited; none is visited twice.
pub fn for_each_entry<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    mut visit: impl FnMut(&K, &V),
) -> io::Result<()> {
    read_batches(map, 1, |key: &K, values: &[V]| visit(key, &values[0]))
}

/// Calls `visit` with every entry of the per-CPU array `map` and its values on each of `cpus`
/// possible CPUs (`V` a multiple of 8 bytes, as the kernel lays per-CPU values out).
pub fn for_each_per_cpu_entry<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    cpus: usize,
    visit: impl FnMut(&K, &[V]),
) -> io::Result<()> {
    if !size_of::<V>().is_multiple_of(8) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "per-CPU values must be a multiple of 8 bytes"));
    }
    read_batches(map, cpus, visit)
}

/// Reads `map` in batches; each entry has `per_key` values.
fn read_batches<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    per_key: usize,
    mut visit: impl FnMut(&K, &[V]),
) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    let sizes = (info.key_size() as usize, info.value_size() as usize);
    if sizes != (size_of::<K>(), size_of::<V>()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the map has {}-byte keys and {}-byte values, the reader expects {} and {}",
                sizes.0,
                sizes.1,
                size_of::<K>(),
                size_of::<V>()
            ),
        ));
    }
    let mut keys = vec![K::default(); BATCH_ENTRIES as usize];
    let mut values = vec![V::default(); BATCH_ENTRIES as usize * per_key];
    // The kernel's cursor: none for the first batch, then where the last one ended (a bucket
    // index for hash maps, an index for arrays).
    let (mut cursor, mut next) = (None::<u32>, 0u32);
    loop {
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| std::ptr::from_ref::<u32>(c) as u64),
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH_ENTRIES,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and values and at two u32
        // cursors, all alive for the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>() as libc::c_uint)
        };
        let done = if rc < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOENT) {
                return Err(error);
            }
            true
        } else {
            false
        };
        let got = (attr.count as usize).min(keys.len());
        for (k, v) in keys[..got].iter().zip(values.chunks(per_key)) {
            visit(k, v);
        }
        if done {
            return Ok(());
        }
        cursor = Some(next);
    }
}
