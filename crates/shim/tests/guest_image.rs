//! kata's guest layout through real containerd: the guest boots a root filesystem image in
//! kata's osbuilder layout (`make guest-image` writes `rootfs.img` from our guest's files, and
//! `rootfs-kata.img` with kata's agent when `KATA_AGENT` is given) instead of an initramfs,
//! attached as kata attaches it: an NVDIMM backed by the file (the default) or a read-only
//! virtio-blk disk (`disable_image_nvdimm`). This kernel has those drivers as modules, so
//! `image_boot_initrd` loads them first (kata's guest kernel has them built in).

use std::path::Path;
use std::time::Duration;

use tests::containerd::{kata_conf, qemu_running_in, wait_until, Containerd};
use tests::guest::Agent;
use tests::vm::guest_image;
use tests::{CniPod, PEER_IP, POD_IP};

fn image_conf(c: &Containerd, nvdimm: bool) -> String {
    let img = guest_image();
    let (initrd, image) = match Agent::under_test() {
        Agent::Ours => ("initrd.img", "rootfs.img"),
        Agent::Kata => ("initrd-kata.img", "rootfs-kata.img"),
    };
    let image = img.join(image);
    assert!(image.is_file(), "{} missing: run `make guest-image`", image.display());
    let keys = format!(
        "image = \"{}\"\nimage_boot_initrd = \"{}\"\ndisable_image_nvdimm = {}\n",
        image.display(),
        img.join("boot-initrd.img").display(),
        !nvdimm
    );
    kata_conf(&c.run_dir()).replace(&format!("initrd = \"{}\"\n", img.join(initrd).display()), &keys)
}

fn mounts_under(dir: &Path) -> usize {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.display().to_string();
    m.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&d)).count()
}

/// Boot the image one way, and check what a user relies on: the guest's root is the image, read
/// only; the pod network is in the guest; the VM (not the pod's namespace) answers the peer; a
/// workload in the sandbox pings the peer; teardown leaves nothing.
fn boots_and_carries_the_pod(nvdimm: bool) {
    let tag = if nvdimm { "img-nvdimm" } else { "img-blk" };
    let c = tests::containerd::start_containerd(tag, Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    std::fs::write(c.dir.0.join("configuration.toml"), image_conf(&c, nvdimm)).unwrap();
    let cni = CniPod::new();
    // A route with its own MTU (Cilium sets them): it reaches the guest with it (route field 8).
    cni.pod.ip(&["route", "add", "10.66.0.0/16", "via", "10.88.0.254", "dev", "eth0", "mtu", "1400"]);
    let before = cni.pod.snapshot();
    let id = if nvdimm { "imgnv" } else { "imgblk" };
    c.run_ok(id, &cni.pod.path());
    let run = c.run_dir().join(id);

    let qemu = tests::containerd::qemu_pid_in(&run).expect("QEMU runs");
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap()).replace('\0', " ");
    let guest = tests::guest::sh(&run, "grep ' / ' /proc/mounts; cat /proc/cmdline; ip -o -4 addr show eth0; ip route");
    let root = guest.lines().find(|l| l.contains(" / ") && !l.starts_with("rootfs")).unwrap_or_default().to_owned();
    if nvdimm {
        assert!(cmdline.contains("-device nvdimm,id=nv0,memdev=rootimg,unarmed=on"), "{cmdline}");
        assert!(
            root.starts_with("/dev/pmem0p1 / ext4 ro,") && root.contains("dax"),
            "the root is the NVDIMM, read-only, DAX:\n{guest}"
        );
        assert!(
            guest.contains("root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4"),
            "{guest}"
        );
    } else {
        assert!(cmdline.contains("-device virtio-blk-pci,drive=rootimg"), "{cmdline}");
        assert!(!cmdline.contains("nvdimm"), "{cmdline}");
        assert!(root.starts_with("/dev/vda1 / ext4 ro,"), "the root is the virtio-blk disk, read-only:\n{guest}");
    }
    // Read-only in fact, not only in name.
    let write = tests::guest::sh(&run, "touch /written-by-guest 2>&1; ls /written-by-guest 2>&1");
    assert!(write.contains("Read-only file system"), "{write}");
    assert!(guest.contains("inet 10.88.0.5/24") && guest.contains("default via 10.88.0.1 dev eth0"), "{guest}");
    // kata's agent applies a route's MTU since 3.17 only; ours does.
    // Busybox's `ip` does not print it: iproute2's, in the image for this, does.
    if Agent::under_test() == Agent::Ours {
        let route = tests::guest::sh(&run, "/usr/lib/iproute2/ip route show 10.66.0.0/16");
        assert!(
            route.contains("10.66.0.0/16 via 10.88.0.254 dev eth0") && route.contains("mtu 1400"),
            "the route's MTU:\n{route}"
        );
    }

    // The peer's ping is answered by the VM: the pod namespace's own kernel saw no echo.
    let pod_echos = cni.pod.icmp_echos_received();
    tests::run(&["ip", "netns", "exec", &cni.peer.name, "ping", "-c", "3", "-i", "0.3", "-W", "5", POD_IP]);
    assert_eq!(cni.pod.icmp_echos_received(), pod_echos, "the pod namespace answered, not the VM");

    // A workload in the sandbox reaches the peer (counted there).
    let peer_echos = cni.peer.icmp_echos_received();
    let script = format!("ping -c 1 -W 10 {PEER_IP} >/dev/null && echo reached");
    let out = c.ctr(&["task", "exec", "--exec-id", "p1", id, "sh", "-c", &script]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("reached"), "{out:?}");
    assert_eq!(cni.peer.icmp_echos_received(), peer_echos + 1, "the peer received the workload's ping");

    c.remove_sandbox(id);
    wait_until(Duration::from_secs(20), "QEMU gone", || !qemu_running_in(&run));
    assert_eq!(tests::containerd::virtiofsds_in(&run), 0, "virtiofsd left");
    assert_eq!(mounts_under(&c.run_dir()), 0, "mounts left");
    assert!(!run.exists(), "{} left", run.display());
    assert_eq!(cni.pod.snapshot(), before, "the namespace is as CNI left it");
}

#[test]
fn the_guest_image_as_an_nvdimm_boots_read_only_with_dax_and_carries_the_pod() {
    boots_and_carries_the_pod(true);
}

#[test]
fn the_guest_image_as_a_virtio_blk_disk_boots_read_only_and_carries_the_pod() {
    boots_and_carries_the_pod(false);
}

#[test]
fn an_image_another_user_can_write_is_refused_naming_the_key_and_nothing_starts() {
    let c = tests::containerd::start_containerd("img-bad", Path::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2")));
    let copy = c.dir.0.join("rootfs-copy.img");
    std::fs::copy(guest_image().join("rootfs.img"), &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(65534), None).unwrap();
    let conf = image_conf(&c, true)
        .replace(&guest_image().join("rootfs.img").display().to_string(), &copy.display().to_string());
    let conf = conf.replace(&guest_image().join("rootfs-kata.img").display().to_string(), &copy.display().to_string());
    std::fs::write(c.dir.0.join("configuration.toml"), &conf).unwrap();
    let cni = CniPod::new();
    let before = cni.pod.snapshot();
    let out = c.run("imgbad", &cni.pod.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an image owned by another user must be refused");
    assert!(err.contains("[hypervisor.qemu] image: refused:") && err.contains("owned by uid 65534, not root"), "{err}");
    // Both at once: kata's rule, named.
    let both =
        conf.replace("image = ", &format!("initrd = \"{}\"\nimage = ", guest_image().join("initrd.img").display()));
    std::fs::write(c.dir.0.join("configuration.toml"), both).unwrap();
    let _ = c.ctr(&["container", "rm", "imgbad"]);
    let out = c.run("imgbad", &cni.pod.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("image: is exclusive with initrd"), "{err}");
    let _ = c.ctr(&["container", "rm", "imgbad"]);
    assert!(!qemu_running_in(&c.run_dir()));
    assert_eq!(cni.pod.snapshot(), before);
}
