//! Windows: ACLs instead of modes, `FlushFileBuffers` on a directory handle instead of a
//! directory `fsync`, `GetDiskFreeSpaceExW`, the NTFS file index.
//!
//! Private means a protected DACL (nothing inherited from `C:\ProgramData`, whose DACL lets
//! every user read and create) with full control for SYSTEM, Administrators, the service's
//! virtual account `NT SERVICE\smtp2oauth` and the user running this process. On a directory
//! the entries are inheritable, so files created inside are private without a call of their
//! own, whoever creates them: the service, or an administrator running `smtp2oauth account
//! login` in an elevated prompt.
//!
//! Each Win32 call sits in its own short function with a SAFETY comment; buffers the system
//! allocates are freed with `LocalFree` by [`LocalBox`] on every path.

use crate::sddl;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::sync::OnceLock;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW,
    ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW, SDDL_REVISION_1,
    SE_FILE_OBJECT, SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, GetTokenInformation,
    PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, FILE_FLAG_BACKUP_SEMANTICS, GetDiskFreeSpaceExW,
    GetFileInformationByHandle,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// The SID of `NT SERVICE\smtp2oauth`, the account the service runs as.
pub fn service_sid() -> String {
    sddl::service_sid(crate::SERVICE_NAME)
}

/// Gives `path` the private DACL: SYSTEM, Administrators, the service account and `extra`
/// (SIDs), full control, nothing inherited from its parent. On a directory the entries are
/// inherited by its contents: Windows applies them to every file and directory inside that does
/// not have a protected DACL of its own.
pub fn make_private(path: &Path, extra: &[&str]) -> io::Result<()> {
    let service = service_sid();
    let mut owners = vec![service.as_str()];
    owners.extend_from_slice(extra);
    set_protected_dacl(path, &sddl::private_dacl(&owners, path.is_dir()))
}

/// Like [`make_private`], adding the user running this process.
fn make_private_for_us(path: &Path) -> io::Result<()> {
    let user = current_user_sid()?;
    make_private(path, &[user])
}

pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().create(path)?;
    make_private_for_us(path)
}

pub(crate) fn open_private(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let existed = path.exists();
    let file = options.open(path)?;
    if !existed {
        make_private_for_us(path)?;
    }
    Ok(file)
}

/// Nothing to add: a file created inside a private directory inherits its DACL.
pub(crate) fn private_file_options(_options: &mut OpenOptions) {}

/// A directory handle whose `sync_all` (`FlushFileBuffers`) flushes the directory: opening a
/// directory needs `FILE_FLAG_BACKUP_SEMANTICS`, flushing needs write access.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
}

#[allow(unsafe_code)]
pub(crate) fn free_space(path: &Path) -> io::Result<u64> {
    let wide = wide(path.as_os_str());
    let mut available = 0u64;
    // SAFETY: `wide` is a NUL-terminated UTF-16 string that outlives the call; the one out
    // pointer is a valid u64, the two others are null, which the function allows.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            wide.as_ptr(),
            &mut available,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(available)
}

#[allow(unsafe_code)]
pub(crate) fn file_id(path: &Path) -> io::Result<u64> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)?;
    // SAFETY: all-zero is a valid BY_HANDLE_FILE_INFORMATION (integers and FILETIMEs only).
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is open for the duration of the call (owned by `file`), and `info` is
    // a valid, writable structure of the type the function fills.
    let ok = unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow))
}

pub(crate) fn readable_by_others(path: &Path) -> io::Result<Option<String>> {
    let dacl = dacl_sddl(path)?;
    let who = sddl::broad_readers(&dacl);
    Ok((!who.is_empty()).then(|| who.join(", ")))
}

pub(crate) fn restrict_advice(path: &Path) -> String {
    format!(
        "icacls \"{}\" /inheritance:r /grant:r SYSTEM:(OI)(CI)F Administrators:(OI)(CI)F \"NT SERVICE\\{}:(OI)(CI)F\" (or `smtp2oauth service install` again)",
        path.display(),
        crate::SERVICE_NAME
    )
}

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Memory the system allocated for us with `LocalAlloc`, freed on drop.
struct LocalBox(*mut core::ffi::c_void);

impl Drop for LocalBox {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a function documented to allocate it with
            // LocalAlloc, and nothing uses it after this drop.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// Reads a UTF-16 string the system allocated (NUL-terminated).
#[allow(unsafe_code)]
fn take_wide_string(p: &LocalBox) -> String {
    let ptr = p.0 as *const u16;
    let mut len = 0;
    // SAFETY: the system returned a NUL-terminated string at `ptr`, alive while `p` is.
    unsafe {
        while *ptr.add(len) != 0 {
            len += 1;
        }
        String::from_utf16_lossy(std::slice::from_raw_parts(ptr, len))
    }
}

/// The SID of the user this process runs as (the service account, when run as the service).
fn current_user_sid() -> io::Result<&'static str> {
    static SID: OnceLock<String> = OnceLock::new();
    if let Some(sid) = SID.get() {
        return Ok(sid);
    }
    let sid = query_current_user_sid()?;
    Ok(SID.get_or_init(|| sid))
}

#[allow(unsafe_code)]
fn query_current_user_sid() -> io::Result<String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing; `token` is a
    // valid out pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let result = token_user_sid(token);
    // SAFETY: `token` was opened above and is closed once.
    unsafe { CloseHandle(token) };
    result
}

#[allow(unsafe_code)]
fn token_user_sid(token: HANDLE) -> io::Result<String> {
    // TOKEN_USER plus the SID it points into: 256 bytes hold the largest SID (68 bytes).
    // u64 elements keep the buffer aligned for the structure's pointer.
    let mut buffer = [0u64; 32];
    let mut len = 0u32;
    // SAFETY: the buffer is writable for the size given, and `len` is a valid out pointer.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenUser,
            buffer.as_mut_ptr().cast(),
            std::mem::size_of_val(&buffer) as u32,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER, aligned (u64 buffer).
    let user = unsafe { &*(buffer.as_ptr() as *const TOKEN_USER) };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `user.User.Sid` points into `buffer`, alive during the call; `text` receives a
    // LocalAlloc'ed string, owned by the LocalBox below.
    if unsafe { ConvertSidToStringSidW(user.User.Sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(take_wide_string(&LocalBox(text.cast())))
}

/// Sets the DACL in `sddl` (which must be protected, `D:P...`) on `path`, and lets Windows
/// propagate its inheritable entries to what is inside.
#[allow(unsafe_code)]
fn set_protected_dacl(path: &Path, sddl: &str) -> io::Result<()> {
    let descriptor = descriptor_from_sddl(sddl)?;
    let mut present = 0;
    let mut defaulted = 0;
    let mut dacl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `descriptor` is a valid security descriptor alive until the end of this function;
    // the out pointers are valid. The DACL pointer points into the descriptor.
    let ok =
        unsafe { GetSecurityDescriptorDacl(descriptor.0, &mut present, &mut dacl, &mut defaulted) };
    if ok == 0 || present == 0 {
        return Err(io::Error::other(format!("no DACL in {sddl}")));
    }
    let wide = wide(path.as_os_str());
    // SAFETY: `wide` is a NUL-terminated path; `dacl` points into `descriptor`, alive during the
    // call; owner, group and SACL are not set (null).
    let status = unsafe {
        SetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            dacl,
            std::ptr::null(),
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn descriptor_from_sddl(sddl: &str) -> io::Result<LocalBox> {
    let text = wide(OsStr::new(sddl));
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `text` is NUL-terminated UTF-16; `descriptor` receives a LocalAlloc'ed security
    // descriptor, owned by the returned LocalBox; the size out pointer may be null.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            text.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(LocalBox(descriptor))
}

/// The DACL of `path` as SDDL text.
#[allow(unsafe_code)]
fn dacl_sddl(path: &Path) -> io::Result<String> {
    let wide = wide(path.as_os_str());
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `wide` is a NUL-terminated path; the DACL and descriptor out pointers are valid,
    // the others null (not requested). The descriptor is LocalAlloc'ed, owned by `owned` below.
    let status = unsafe {
        GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    let owned = LocalBox(descriptor);
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `owned.0` is the valid descriptor just returned; `text` receives a LocalAlloc'ed
    // string, owned by the LocalBox below; the length out pointer may be null.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            owned.0,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(take_wide_string(&LocalBox(text.cast())))
}
