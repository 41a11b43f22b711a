//! Reading the kernel's mount tables (`/proc/mounts`, `/proc/self/mountinfo`) as text: which
//! device is mounted where. Paths there carry space, tab, newline and backslash as `\ooo` octal.

use std::path::Path;

/// The device number ("major:minor") of the file system mounted at `mountpoint`, from the text
/// of /proc/self/mountinfo; the last (topmost) mount there if several are stacked. Read this
/// way rather than by stat(2), which on a FUSE mount asks its daemon.
pub fn device_of(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    let want = mountpoint.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        // Fields: id, parent id, major:minor, root, mount point, ...
        let mut f = line.split(' ');
        let dev = f.nth(2)?;
        let mp = f.nth(1)?;
        (unescape_path(mp) == want).then(|| dev.to_string())
    })
}

/// A path as the mount tables write it, with its `\ooo` octal escapes decoded.
pub fn unescape_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
41 22 0:39 / /tmp/sf/mnt rw,relatime shared:20 - fuse.sealfs sealfs:127.0.0.1:7100 rw,user_id=0
42 22 0:40 / /mnt/with\\040space rw,relatime shared:21 - fuse.sealfs sealfs:m rw
43 41 0:41 / /tmp/sf/mnt rw,relatime shared:22 - fuse.sealfs sealfs:other rw
";

    #[test]
    fn the_topmost_mount_at_the_path_is_found() {
        assert_eq!(device_of(INFO, Path::new("/tmp/sf/mnt")).as_deref(), Some("0:41"));
        assert_eq!(device_of(INFO, Path::new("/")).as_deref(), Some("254:0"));
    }

    #[test]
    fn escaped_paths_match_and_other_paths_do_not() {
        assert_eq!(device_of(INFO, Path::new("/mnt/with space")).as_deref(), Some("0:40"));
        assert_eq!(device_of(INFO, Path::new("/tmp/sf")), None);
        assert_eq!(device_of(INFO, Path::new("/tmp/sf/mnt/")), None);
        assert_eq!(device_of("", Path::new("/")), None);
        assert_eq!(device_of("garbage\n1 2\n", Path::new("/")), None);
    }

    #[test]
    fn octal_escapes_decode_and_stray_backslashes_stay() {
        assert_eq!(unescape_path(r"a\040b\011c\012d\134e"), "a b\tc\nd\\e");
        // A path that holds a literal `\040` is written `\134040`.
        assert_eq!(unescape_path(r"x\134040"), r"x\040");
        assert_eq!(unescape_path(r"a\0"), r"a\0");
        assert_eq!(unescape_path(r"a\09x"), r"a\09x");
        assert_eq!(unescape_path(r"\"), r"\");
    }
}
