//! A raw output pointer shared by parallel tasks that write disjoint elements.

/// A raw pointer that may be shared across rayon tasks writing disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: the tasks sharing a `SyncPtr` write disjoint elements of one live allocation.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    pub(crate) unsafe fn add(self, offset: usize) -> Self {
        Self(self.0.add(offset))
    }
}
