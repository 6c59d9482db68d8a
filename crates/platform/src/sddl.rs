//! Windows security descriptors as SDDL text: the private DACL we set, what a DACL we find
//! grants to everyone, and the SID of a service's virtual account.
//!
//! Pure functions over strings, so that they are tested on every platform; `windows.rs` turns
//! the strings into security descriptors and back with the Win32 conversion functions.

/// The SID of the virtual account `NT SERVICE\<name>`: `S-1-5-80-` and the SHA-1 of the service
/// name in upper case, UTF-16LE, read as five little-endian 32-bit numbers. Windows derives it
/// the same way, so it is known before the service exists.
pub(crate) fn service_sid(name: &str) -> String {
    let utf16: Vec<u8> = name
        .to_uppercase()
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let hash = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &utf16);
    let parts: Vec<String> = hash
        .as_ref()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
        .collect();
    format!("S-1-5-80-{}", parts.join("-"))
}

/// A protected DACL (nothing inherited from the parent) that gives full control to SYSTEM,
/// Administrators and each SID in `owners`; on a directory, inherited by everything created
/// inside it.
pub(crate) fn private_dacl(owners: &[&str], directory: bool) -> String {
    let inherit = if directory { "OICI" } else { "" };
    let mut sddl = String::from("D:P");
    let mut seen: Vec<&str> = Vec::new();
    for sid in ["SY", "BA"].iter().chain(owners) {
        let sid = canonical(sid);
        if !seen.contains(&sid) {
            seen.push(sid);
            sddl.push_str(&format!("(A;{inherit};FA;;;{sid})"));
        }
    }
    sddl
}

/// SYSTEM and Administrators by alias, so that they are not listed twice.
fn canonical(sid: &str) -> &str {
    match sid {
        "S-1-5-18" => "SY",
        "S-1-5-32-544" => "BA",
        other => other,
    }
}

/// Groups that stand for "every user of this machine", by SDDL alias and SID.
const BROAD: [(&str, &str, &str); 7] = [
    ("WD", "S-1-1-0", "Everyone"),
    ("AU", "S-1-5-11", "Authenticated Users"),
    ("BU", "S-1-5-32-545", "Users"),
    ("IU", "S-1-5-4", "Interactive"),
    ("BG", "S-1-5-32-546", "Guests"),
    ("AN", "S-1-5-7", "Anonymous"),
    ("NU", "S-1-5-2", "Network"),
];

/// The broad groups that the DACL in `sddl` lets read the object: allow ACEs that apply to the
/// object itself (not inherit-only) and grant reading its data. A missing or null DACL lets
/// everyone in.
pub(crate) fn broad_readers(sddl: &str) -> Vec<&'static str> {
    let Some(dacl) = dacl_part(sddl) else {
        return vec!["Everyone (no DACL)"];
    };
    if dacl.starts_with("NO_ACCESS_CONTROL") {
        return vec!["Everyone (no DACL)"];
    }
    let mut who = Vec::new();
    for ace in dacl.split('(').skip(1) {
        let fields: Vec<&str> = ace.trim_end_matches(')').split(';').collect();
        let [kind, flags, rights, _, _, sid, ..] = fields[..] else {
            continue;
        };
        let grants_read = rights_mask(rights).is_some_and(|m| m & READ != 0);
        if kind != "A" || has_flag(flags, "IO") || !grants_read {
            continue;
        }
        if let Some((_, _, name)) = BROAD.iter().find(|(a, s, _)| *a == sid || *s == sid)
            && !who.contains(name)
        {
            who.push(*name);
        }
    }
    who
}

/// The text after `D:`, up to a SACL (`S:`) if one follows.
fn dacl_part(sddl: &str) -> Option<&str> {
    let start = sddl.find("D:")? + 2;
    let rest = &sddl[start..];
    Some(rest.find("S:").map_or(rest, |end| &rest[..end]))
}

fn has_flag(flags: &str, flag: &str) -> bool {
    flags.as_bytes().chunks(2).any(|c| c == flag.as_bytes())
}

/// FILE_READ_DATA (= list a directory), GENERIC_READ, GENERIC_ALL.
const READ: u32 = 0x1 | 0x8000_0000 | 0x1000_0000;

/// An ACE's access mask: a hexadecimal number, or two-letter rights codes run together.
fn rights_mask(rights: &str) -> Option<u32> {
    if let Some(hex) = rights
        .strip_prefix("0x")
        .or_else(|| rights.strip_prefix("0X"))
    {
        return u32::from_str_radix(hex, 16).ok();
    }
    let mut mask = 0;
    for code in rights.as_bytes().chunks(2) {
        mask |= match code {
            b"GA" => 0x1000_0000,
            b"GR" => 0x8000_0000,
            b"GW" => 0x4000_0000,
            b"GX" => 0x2000_0000,
            b"FA" => 0x001F_01FF,
            b"FR" => 0x0012_0089,
            b"FW" => 0x0012_0116,
            b"FX" => 0x0012_00A0,
            b"CC" => 0x1,
            b"DC" => 0x2,
            b"LC" => 0x4,
            b"SW" => 0x8,
            b"RP" => 0x10,
            b"WP" => 0x20,
            b"DT" => 0x40,
            b"LO" => 0x80,
            b"CR" => 0x100,
            b"SD" => 0x1_0000,
            b"RC" => 0x2_0000,
            b"WD" => 0x4_0000,
            b"WO" => 0x8_0000,
            _ => return None,
        };
    }
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_sids_are_derived_as_windows_does() {
        // Well-known: the TrustedInstaller service's account on every Windows installation.
        assert_eq!(
            service_sid("TrustedInstaller"),
            "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
        );
        assert_eq!(
            service_sid("trustedinstaller"),
            service_sid("TRUSTEDINSTALLER")
        );
        assert!(service_sid("smtp2oauth").starts_with("S-1-5-80-"));
    }

    #[test]
    fn the_private_dacl_is_protected_and_inherited_inside_directories() {
        let svc = service_sid("smtp2oauth");
        assert_eq!(
            private_dacl(&[&svc, "S-1-5-18"], true),
            format!("D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{svc})")
        );
        assert_eq!(
            private_dacl(&["S-1-5-21-1-2-3-1001"], false),
            "D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;S-1-5-21-1-2-3-1001)"
        );
        assert!(broad_readers(&private_dacl(&[&svc], true)).is_empty());
    }

    #[test]
    fn broad_read_grants_are_found() {
        // C:\ProgramData's own DACL: Users may read and create.
        let program_data = "O:SYG:SYD:PAI(A;OICIIO;GA;;;CO)(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)\
                            (A;OICI;0x1200a9;;;BU)(A;CI;0x100116;;;BU)";
        assert_eq!(broad_readers(program_data), vec!["Users"]);
        assert_eq!(
            broad_readers("D:AI(A;ID;FR;;;WD)(A;ID;CCLCRC;;;AU)"),
            vec!["Everyone", "Authenticated Users"]
        );
        assert_eq!(
            broad_readers("D:(A;;GR;;;S-1-5-32-545)"),
            vec!["Users"],
            "SIDs spelled out"
        );
        assert_eq!(
            broad_readers("D:NO_ACCESS_CONTROL"),
            vec!["Everyone (no DACL)"]
        );
        assert_eq!(broad_readers("O:BA"), vec!["Everyone (no DACL)"]);
    }

    #[test]
    fn grants_that_do_not_let_anyone_read_are_not_reported() {
        // Inherit-only, deny, write-only (create files), traverse-only.
        let dacl = "D:P(A;OICIIO;GA;;;BU)(D;;FA;;;WD)(A;;0x100116;;;BU)(A;;0x20;;;AU)\
                    (A;OICI;FA;;;SY)S:(AU;SA;FA;;;WD)";
        assert!(broad_readers(dacl).is_empty(), "{:?}", broad_readers(dacl));
    }
}
