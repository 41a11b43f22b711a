//! The NFS gateway through a real Linux kernel NFS client (tests/nfsvm boots one under qemu):
//! mount.nfs with no port options, pjdfstest, fsx, gateway failover with open files, two gateways
//! and two clients, permissions and export options, a large listing under concurrent creates,
//! and libnfs as a second, independent client.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sealfs_cli::cluster::GatewaySpec;
use sealfs_tests::{parse_pjdfstest, pattern, pjdfstest_list, tool, NfsVm, TestCluster};

fn gateway(args: &[&str]) -> GatewaySpec {
    GatewaySpec {
        nfs_listen: "127.0.0.1:0".into(),
        portmap_listen: None,
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A cluster with the given gateways (and a FUSE mount on the host for checks).
fn cluster(gateways: Vec<GatewaySpec>) -> TestCluster {
    TestCluster::start_with(3, true, |s| s.gateways = gateways)
}

fn gw_port(c: &TestCluster, i: usize) -> u16 {
    port(&c.cluster.gateway_addr(i).expect("gateway address"))
}

fn assert_guest_ok(r: &sealfs_tests::GuestRun, what: &str) {
    assert_eq!(r.code, 0, "{what}: the guest exited with {}:\n{}", r.code, r.output);
}

#[test]
fn mount_nfs_with_no_port_options_and_round_trip() {
    let mut g = gateway(&[]);
    g.portmap_listen = Some("127.0.0.1:111".into());
    let c = cluster(vec![g]);
    let mut vm = NfsVm::new(gw_port(&c, 0));
    vm.set("MOUNT_HELPER", "1");
    let r = vm.run(
        r#"M=$1; set -e
echo hello > $M/a.txt; [ "$(cat $M/a.txt)" = hello ]
dd if=/dev/urandom of=/tmp/r bs=1k count=3000 2>/dev/null; cp /tmp/r $M/big; cmp /tmp/r $M/big
mkdir $M/d; mv $M/a.txt $M/d/b.txt; [ "$(cat $M/d/b.txt)" = hello ]
ln $M/d/b.txt $M/hard; [ "$(stat -c %h $M/hard)" = 2 ]
ln -s d/b.txt $M/sym; [ "$(cat $M/sym)" = hello ]; [ "$(readlink $M/sym)" = d/b.txt ]
chmod 600 $M/hard; [ "$(stat -c %a $M/d/b.txt)" = 600 ]
rm $M/hard $M/sym $M/big; rm -r $M/d
[ -z "$(ls $M)" ]
echo ROUNDTRIP-OK
"#,
    );
    assert_guest_ok(&r, "mount.nfs round trip");
    assert!(
        r.output.contains("portmap") || r.output.contains("mount.nfs"),
        "mount.nfs was used:\n{}",
        r.output
    );
    assert!(r.output.contains("ROUNDTRIP-OK"));
}

#[test]
fn pjdfstest_on_the_kernel_nfs_mount() {
    let c = cluster(vec![gateway(&[])]);
    let vm = NfsVm::new(gw_port(&c, 0));
    vm.add_bins(&[&tool("pjdfstest", "cargo install pjdfstest")]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest");
    vm.add_file("etc/shared.toml", &std::fs::read(dir.join("shared.toml")).unwrap());
    vm.add_file("etc/extended.toml", &std::fs::read(dir.join("extended.toml")).unwrap());
    let r = vm.run(
        r#"M=$1; cd /tmp
for cfg in shared extended; do
  mkdir $M/$cfg
  echo "=== $cfg"
  pjdfstest -c /etc/$cfg.toml -p $M/$cfg 2>&1 | grep -v '^ \|Backtrace'
done
exit 0
"#,
    );
    assert_guest_ok(&r, "pjdfstest");
    let excluded = pjdfstest_list("nfs-excluded.txt");
    let skipped = pjdfstest_list("skipped.txt");
    let (shared, extended) = r.output.split_once("=== extended").expect("both runs reported");
    let shared = parse_pjdfstest(shared);
    let extended = parse_pjdfstest(extended);
    assert!(
        extended.iter().filter(|t| t.1 == "ok").count() > 300,
        "too few tests ran:\n{}",
        r.output
    );
    for (name, status, reason) in shared.iter().chain(&extended) {
        match status.as_str() {
            "FAILED" => assert!(
                excluded.contains_key(name),
                "{name} failed on NFS ({reason}) and is not in nfs-excluded.txt"
            ),
            "skipped" => assert!(
                skipped.contains_key(name) || reason.starts_with("requires features"),
                "{name} was skipped ({reason}) and is not listed"
            ),
            _ => {}
        }
    }
    // The exclusion list is kept short and true: every entry still fails for its reason.
    for name in excluded.keys() {
        assert!(
            extended.iter().any(|t| &t.0 == name && t.1 == "FAILED"),
            "{name} is excluded but no longer fails"
        );
    }
}

#[test]
fn fsx_on_the_kernel_nfs_mount() {
    let c = cluster(vec![gateway(&[])]);
    let vm = NfsVm::new(gw_port(&c, 0));
    vm.add_bins(&[&tool("fsx", "cargo install fsx")]);
    let r = vm.run("M=$1; cd /tmp; fsx -N 10000 -S 11 -P /tmp $M/fsxfile > /tmp/fsx.txt 2>&1; rc=$?; tail -20 /tmp/fsx.txt; exit $rc\n");
    assert_guest_ok(&r, "fsx");
    assert!(r.output.contains("All operations completed A-OK"), "{}", r.output);
}

/// An ON_SIGNAL command that hands the word to the test through files and waits for it to act.
fn signal_relay(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("relay.sh");
    let body = format!(
        "#!/bin/sh\ntouch {d}/$1.request\nn=0\nwhile [ ! -f {d}/$1.done ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done\n",
        d = dir.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn wait_request(dir: &Path, word: &str, guest: &std::thread::JoinHandle<sealfs_tests::GuestRun>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !dir.join(format!("{word}.request")).exists() {
        if guest.is_finished() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_gateway_takes_over_another_with_open_files() {
    let mut c = cluster(vec![gateway(&[]), gateway(&[])]);
    let addr_a = c.cluster.gateway_addr(0).unwrap();
    let relay = tempfile::tempdir().unwrap();
    let mut vm = NfsVm::new(port(&addr_a));
    vm.set("ON_SIGNAL", signal_relay(relay.path()).to_str().unwrap());
    let guest = std::thread::spawn(move || {
        vm.run(
            r#"M=$1; set -e
mkdir $M/fo; cd $M/fo
exec 3>$M/fo/open.txt
echo part1 >&3
echo a > a
echo "HOST_SIGNAL swap"
sleep 4
echo part2 >&3
exec 3>&-
[ "$(cat $M/fo/open.txt)" = "$(printf 'part1\npart2')" ]
ls $M/fo | grep -q '^a$'
echo b > b; [ "$(cat a b)" = "$(printf 'a\nb')" ]
cd /; echo FAILOVER-OK
"#,
        )
    });
    assert!(
        wait_request(relay.path(), "swap", &guest),
        "the guest never asked for the swap"
    );
    // Gateway A dies; gateway B comes up on A's address.
    c.cluster.stop_gateway(0, Signal::SIGKILL);
    c.cluster.stop_gateway(1, Signal::SIGTERM);
    c.cluster.start_gateway(1, Some(addr_a)).unwrap();
    std::fs::write(relay.path().join("swap.done"), b"").unwrap();
    let r = guest.join().unwrap();
    assert_guest_ok(&r, "failover");
    assert!(r.output.contains("FAILOVER-OK"));
    assert_eq!(
        std::fs::read(c.mnt().join("fo/open.txt")).unwrap(),
        b"part1\npart2\n",
        "every byte is in the cluster"
    );
}

#[test]
fn two_gateways_two_clients_close_to_open() {
    let c = cluster(vec![gateway(&[]), gateway(&[])]);
    std::fs::create_dir(c.mnt().join("x")).unwrap();
    std::fs::write(c.mnt().join("x/a.txt"), b"version 1\n").unwrap();
    // Client B reads a.txt (and so caches it), says it is ready, waits for A's new version.
    let script_b = r#"M=$1; set -e
[ "$(cat $M/x/a.txt)" = "version 1" ]
echo ready > $M/x/b-ready
n=0; while [ ! -f $M/x/go ]; do sleep 0.5; n=$((n+1)); [ $n -lt 240 ]; done
[ "$(cat $M/x/a.txt)" = "version 2" ]
echo "from b" > $M/x/b.txt
echo B-OK
"#;
    // Client A waits for B, rewrites a.txt, closes it, and reads what B writes back.
    let script_a = r#"M=$1; set -e
n=0; while [ ! -f $M/x/b-ready ]; do sleep 0.5; n=$((n+1)); [ $n -lt 240 ]; done
echo "version 2" > $M/x/a.txt
touch $M/x/go
n=0; while [ ! -f $M/x/b.txt ]; do sleep 0.5; n=$((n+1)); [ $n -lt 240 ]; done
[ "$(cat $M/x/b.txt)" = "from b" ]
echo A-OK
"#;
    let mut vm_a = NfsVm::new(gw_port(&c, 0));
    let mut vm_b = NfsVm::new(gw_port(&c, 1));
    // No caching of names that do not exist yet, so the polls see new files at once.
    vm_a.set("MOUNTOPTS", "lookupcache=positive");
    vm_b.set("MOUNTOPTS", "lookupcache=positive");
    let b = std::thread::spawn(move || vm_b.run(script_b));
    let a = vm_a.run(script_a);
    let b = b.join().unwrap();
    assert_guest_ok(&a, "client A");
    assert_guest_ok(&b, "client B");
    assert!(a.output.contains("A-OK") && b.output.contains("B-OK"));
}

#[test]
fn permissions_and_export_options() {
    let c = cluster(vec![
        gateway(&[]),
        gateway(&["--root-squash"]),
        gateway(&["--read-only"]),
        gateway(&["--allowed-networks", "10.9.9.0/24"]),
    ]);
    // A user may not write root's 0644 file; root may.
    let r = NfsVm::new(gw_port(&c, 0)).run(
        r#"M=$1
echo root > $M/rootfile; chmod 644 $M/rootfile
if su nobody -s /bin/sh -c "echo x >> $M/rootfile" 2>/tmp/err; then echo "nobody could write"; exit 1; fi
cat /tmp/err; grep -q "Permission denied" /tmp/err || exit 2
su nobody -s /bin/sh -c "cat $M/rootfile" | grep -q root || exit 3
echo PERM-OK
"#,
    );
    assert_guest_ok(&r, "non-root write");
    assert!(r.output.contains("PERM-OK"));
    // Root squash: what root creates belongs to nobody, and root cannot write root's file.
    let open = c.mnt().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let r = NfsVm::new(gw_port(&c, 1)).run(
        r#"M=$1
if touch $M/at-root 2>/dev/null; then echo "squashed root wrote into root's 0755 folder"; exit 4; fi
echo squashed > $M/open/squashed; ls -ln $M/open/squashed
[ "$(stat -c %u:%g $M/open/squashed)" = "65534:65534" ] || exit 1
if echo x >> $M/rootfile 2>/dev/null; then echo "squashed root wrote root's file"; exit 2; fi
echo SQUASH-OK
"#,
    );
    assert_guest_ok(&r, "root squash");
    // Read-only: reads work, every change is EROFS.
    let r = NfsVm::new(gw_port(&c, 2)).run(
        r#"M=$1
cat $M/rootfile | grep -q root || exit 1
if touch $M/new 2>/tmp/err; then exit 2; fi; grep -q "Read-only" /tmp/err || { cat /tmp/err; exit 3; }
if mkdir $M/newdir 2>/tmp/err; then exit 4; fi; grep -q "Read-only" /tmp/err || exit 5
if rm -f $M/rootfile 2>/tmp/err; then exit 6; fi; grep -q "Read-only" /tmp/err || exit 7
echo RO-OK
"#,
    );
    assert_guest_ok(&r, "read-only export");
    // A client outside the allowed networks cannot mount.
    let r = NfsVm::new(gw_port(&c, 3)).run("ls $1\n");
    assert_eq!(
        r.code, 99,
        "a client outside the allowed networks mounted:\n{}",
        r.output
    );
    assert!(std::fs::read(c.mnt().join("rootfile")).unwrap() == b"root\n");
}

#[test]
fn a_big_listing_shows_every_old_entry_once_under_creates() {
    let c = cluster(vec![gateway(&[])]);
    let big = c.mnt().join("big");
    std::fs::create_dir(&big).unwrap();
    const OLD: usize = 50_000;
    // Many creators at once: the host FUSE mount serves them concurrently.
    std::thread::scope(|s| {
        for t in 0..8 {
            let big = big.clone();
            s.spawn(move || {
                for i in (t..OLD).step_by(8) {
                    std::fs::File::create(big.join(format!("old{i:06}"))).unwrap();
                }
            });
        }
    });
    let relay = tempfile::tempdir().unwrap();
    let mut vm = NfsVm::new(gw_port(&c, 0));
    vm.set("ON_SIGNAL", signal_relay(relay.path()).to_str().unwrap())
        .set("TIMEOUT", "900");
    let guest = std::thread::spawn(move || {
        vm.run(
            r#"M=$1
echo "HOST_SIGNAL listing"
ls -1 $M/big > /tmp/list
echo "old entries: $(grep -c '^old' /tmp/list)"
echo "repeated: $(grep '^old' /tmp/list | sort | uniq -d | wc -l)"
echo "new entries seen: $(grep -c '^new' /tmp/list)"
"#,
        )
    });
    assert!(
        wait_request(relay.path(), "listing", &guest),
        "the guest never started listing"
    );
    std::fs::write(relay.path().join("listing.done"), b"").unwrap();
    // Create new entries while the guest lists.
    let mut made = 0;
    while !guest.is_finished() && made < 20_000 {
        std::fs::File::create(big.join(format!("new{made:06}"))).unwrap();
        made += 1;
    }
    let r = guest.join().unwrap();
    assert_guest_ok(&r, "listing");
    assert!(
        r.output.contains(&format!("old entries: {OLD}")),
        "every old entry is listed:\n{}",
        r.output
    );
    assert!(
        r.output.contains("repeated: 0"),
        "no entry is listed twice:\n{}",
        r.output
    );
    eprintln!("{made} entries were created during the listing");
}

#[test]
fn libnfs_is_a_second_client() {
    let c = cluster(vec![gateway(&[])]);
    let p = gw_port(&c, 0);
    let url = |path: &str| format!("nfs://127.0.0.1/{path}?version=3&nfsport={p}&mountport={p}");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    let data = pattern(4, 3 << 20);
    std::fs::write(&src, &data).unwrap();
    let out = Command::new(tool("nfs-cp", "apt-get install libnfs-utils"))
        .arg(&src)
        .arg(url("/copied.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfs-cp to the gateway: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(c.mnt().join("copied.bin")).unwrap(),
        data,
        "what libnfs wrote reads back through FUSE"
    );
    let back = tmp.path().join("back.bin");
    let out = Command::new(tool("nfs-cp", "apt-get install libnfs-utils"))
        .arg(url("/copied.bin"))
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfs-cp from the gateway: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let out = Command::new(tool("nfs-ls", "apt-get install libnfs-utils"))
        .arg(url("/"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains("copied.bin"),
        "nfs-ls: {listing}"
    );
}
