//! Bounds-checked packet access: every read and write of packet bytes goes through here.

use aya_ebpf::programs::XdpContext;

/// Pointer to a `T` at `offset` bytes into the packet, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(<*const T>::cast_mut)
}

/// Copies the `T` at `offset` out of the packet.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T is inside the packet; packet bytes are any bit pattern
    // of the plain byte-array headers this crate reads.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Writes `value` at `offset` into the packet, if it fits inside it.
#[inline(always)]
pub fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let p = ptr_at_mut::<T>(ctx, offset)?;
    // SAFETY: ptr_at_mut checked that the whole T is inside the packet.
    unsafe { p.write_unaligned(value) };
    Some(())
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
