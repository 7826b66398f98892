//! A raw output pointer shared by parallel tasks that write disjoint elements.

/// A raw pointer that may be shared across rayon tasks writing disjoint elements.
pub(crate) struct SyncPtr<T = f32>(pub(crate) *mut T);
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: the tasks sharing a `SyncPtr` write disjoint elements of one live allocation.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must stay inside the allocation.
    pub(crate) unsafe fn add(self, offset: usize) -> Self {
        Self(self.0.add(offset))
    }
}
