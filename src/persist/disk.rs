//! The free-disk floor: the writer reads the data directory's free space (`statvfs`) at most
//! every 100 ms while it writes and every second while idle, and tells `Health`.

use std::path::PathBuf;
use std::time::Instant;

use crate::config::{Config, Durability, Engine};
use crate::core::health::Health;

/// `min_free_disk_bytes`: the writer's readings of the data directory's filesystem. Below the
/// floor, homes refuse new messages (`Health::disk_low`); the writer itself still writes what
/// was sequenced before it knew, so no acknowledged message (async durability) is dropped and
/// no assigned seq goes missing. That is a batch or two, far inside the floor.
pub(super) struct DiskFloor {
    path: PathBuf,
    floor: u64,
    /// When free space was last read.
    pub(super) checked: Instant,
    low: bool,
    /// The last reading failed (logged once until one succeeds).
    unreadable: bool,
    #[cfg(feature = "fault-injection")]
    pub(super) fake_free: Option<u64>,
}

impl DiskFloor {
    pub(super) fn new(config: &Config) -> Option<DiskFloor> {
        let on_disk = config.engine == Engine::Embedded && config.durability != Durability::Memory;
        (on_disk && config.min_free_disk_bytes > 0).then(|| DiskFloor {
            path: config.data.clone(),
            floor: config.min_free_disk_bytes,
            checked: Instant::now(),
            low: false,
            unreadable: false,
            #[cfg(feature = "fault-injection")]
            fake_free: None,
        })
    }

    /// Reads the free space and tells `health`. Once low, the disk stays low until free space
    /// is an eighth above the floor, so `/readyz` does not flap while writes take it back down.
    pub(super) fn check(&mut self, health: &Health) {
        self.checked = Instant::now();
        let free = match self.free() {
            Ok(free) => free,
            Err(e) => {
                if !std::mem::replace(&mut self.unreadable, true) {
                    let path = self.path.display();
                    tracing::warn!(error = %e, "cannot read the free space of {path}");
                }
                return;
            }
        };
        self.unreadable = false;
        let low = match self.low {
            true => free < self.floor.saturating_add(self.floor / 8),
            false => free < self.floor,
        };
        match (self.low, low) {
            (false, true) => tracing::error!(
                free,
                floor = self.floor,
                "the data directory's disk is below min_free_disk_bytes: publish and send are \
                 refused until space is freed"
            ),
            (true, false) => tracing::warn!(free, "disk space is back: messages are accepted"),
            _ => {}
        }
        self.low = low;
        health.disk_read(free, low);
    }

    /// Bytes an unprivileged process may still write on the data directory's filesystem.
    fn free(&self) -> std::io::Result<u64> {
        #[cfg(feature = "fault-injection")]
        if let Some(free) = self.fake_free {
            return Ok(free);
        }
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs is a struct of plain integers, for which all zeroes is valid.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
}
