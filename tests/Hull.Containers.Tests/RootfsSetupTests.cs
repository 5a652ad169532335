using Hull.Linux;
using Hull.Oci;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>The filesystem steps, checked call by call against the recording fake (no root needed).</summary>
public class RootfsSetupTests
{
    static (RecordingSyscalls Sys, RootfsSetup Setup) Make(Action<Spec>? edit = null, bool userns = false,
        List<CgroupHierarchy>? cgroups = null, bool cgroupns = false)
    {
        var spec = DefaultSpec.Create(["sh"], false);
        edit?.Invoke(spec);
        var sys = new RecordingSyscalls();
        sys.Directories.Add("/src");
        sys.Files.Add("/file");
        cgroups ??=
        [
            new("memory", "cgroup", "memory", "/sys/fs/cgroup/memory/hull/c1"),
            new("cpu,cpuacct", "cgroup", "cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/hull/c1"),
        ];
        return (sys, new RootfsSetup(sys, spec, "/r", userns, cgroups, newCgroupNamespace: cgroupns));
    }

    [Fact]
    public void V1_hierarchies_are_bind_mounted_in_a_cgroup_namespace_too()
    {
        List<CgroupHierarchy> hybrid =
        [
            new("memory", "cgroup", "memory", "/sys/fs/cgroup/memory/hull/c1"),
            new("unified", "cgroup2", "", "/sys/fs/cgroup/unified/hull/c1"),
        ];
        var (sys, setup) = Make(cgroups: hybrid, cgroupns: true);
        setup.MountAll();
        var mounts = sys.Calls.Where(c => c.StartsWith("mount")).ToList();
        Assert.Contains("mount /sys/fs/cgroup/memory/hull/c1 /r/sys/fs/cgroup/memory - 0x5000 -", mounts);
        Assert.Contains("mount /sys/fs/cgroup/unified/hull/c1 /r/sys/fs/cgroup/unified - 0x5000 -", mounts);
        Assert.DoesNotContain(mounts, m => m.StartsWith("mount cgroup "));
    }

    [Fact]
    public void A_pure_v2_host_with_a_cgroup_namespace_gets_its_own_cgroup2_mount()
    {
        var (sys, setup) = Make(cgroups: [new("cgroup", "cgroup2", "", "/sys/fs/cgroup/hull/c1")], cgroupns: true);
        setup.MountAll();
        Assert.Contains(sys.Calls, c => c.StartsWith("mount cgroup /r/sys/fs/cgroup cgroup2"));
    }

    [Fact]
    public void Prepare_makes_host_mounts_slave_and_binds_the_rootfs()
    {
        var (sys, setup) = Make();
        setup.PrepareRoot();
        Assert.Equal(["mount none / - 0x84000 -", "mount /r /r - 0x5000 -"], sys.Calls);
    }

    [Fact]
    public void Default_mounts_in_spec_order()
    {
        var (sys, setup) = Make();
        setup.MountAll();
        var mounts = sys.Calls.Where(c => c.StartsWith("mount")).ToList();
        Assert.StartsWith("mount proc /r/proc proc 0x0", mounts[0]);
        Assert.StartsWith("mount tmpfs /r/dev tmpfs 0x1000002 mode=755,size=65536k", mounts[1]);
        Assert.Contains(mounts, m => m.StartsWith(
            "mount devpts /r/dev/pts devpts 0xa newinstance,ptmxmode=0666,mode=0620,gid=5"));
        Assert.Contains(mounts, m => m.StartsWith("mount sysfs /r/sys sysfs 0xf"));
        // cgroup: a tmpfs with one bind mount per hierarchy of the container's own cgroup, then remounted ro
        Assert.Contains("mount /sys/fs/cgroup/memory/hull/c1 /r/sys/fs/cgroup/memory - 0x5000 -", mounts);
        Assert.Contains("symlink /r/sys/fs/cgroup/cpu -> cpu,cpuacct", sys.Calls);
    }

    [Fact]
    public void Read_only_bind_mount_is_remounted_with_its_flags()
    {
        var (sys, setup) = Make();
        setup.MountOne(new Mount { Destination = "/data", Source = "/src", Type = "bind",
            Options = ["rbind", "ro", "nosuid", "rslave"] });
        Assert.Equal(
        [
            "mkdir /r/data 755",
            "mount /src /r/data - 0x5000 -",
            "mount none /r/data - 0x1023 -",
            "mount none /r/data - 0x84000 -",
        ], sys.Calls);
    }

    [Fact]
    public void A_bind_source_the_runtime_cloned_is_attached_then_remounted_with_its_flags()
    {
        var (sys, setup) = Make();
        sys.Directories.Add("/proc/self/fd/7");
        setup.MountOne(new Mount { Destination = "/data", Source = "/src", Type = "bind", Options = ["rbind", "ro"] },
            7);
        Assert.Equal(["mkdir /r/data 755", "move_mount fd 7 /r/data", "mount none /r/data - 0x1021 -"], sys.Calls);
    }

    [Fact]
    public void File_bind_mount_creates_a_file_target()
    {
        var (sys, setup) = Make();
        setup.MountOne(new Mount { Destination = "/etc/resolv.conf", Source = "/file", Options = ["bind"] });
        Assert.Equal(["create /r/etc/resolv.conf", "mount /file /r/etc/resolv.conf - 0x1000 -"], sys.Calls);
    }

    [Fact]
    public void Missing_bind_source_is_a_clear_error()
    {
        var (_, setup) = Make();
        var e = Assert.Throws<ContainerException>(() =>
            setup.MountOne(new Mount { Destination = "/x", Source = "/nope", Options = ["bind"] }));
        Assert.Contains("/nope", e.Message);
    }

    [Fact]
    public void Devices_are_bind_mounted_in_a_user_namespace()
    {
        var (sys, setup) = Make(userns: true);
        setup.CreateDevices();
        Assert.Contains("mount /dev/null /r/dev/null - 0x1000 -", sys.Calls);
        Assert.DoesNotContain(sys.Calls, c => c.StartsWith("mknod"));
        Assert.Contains("symlink /r/dev/ptmx -> pts/ptmx", sys.Calls);
    }

    [Fact]
    public void Devices_are_created_with_mknod_otherwise()
    {
        var (sys, setup) = Make(s => s.Linux!.Devices =
            [new Device { Type = "b", Path = "/dev/sda", Major = 8, Minor = 0, FileMode = 0b110_110_000, Gid = 6 }]);
        setup.CreateDevices();
        Assert.Contains("mknod /r/dev/null 20666 1:3", sys.Calls);
        Assert.Contains("mknod /r/dev/sda 60660 8:0", sys.Calls);
        Assert.Contains("chown /r/dev/sda 0:6", sys.Calls);
    }

    [Fact]
    public void Pivot_root_detaches_the_old_root()
    {
        var (sys, setup) = Make();
        setup.PivotRoot(noPivot: false);
        Assert.Equal(
            ["open /", "chdir /r", "pivot_root . .", "fchdir", "mount none . - 0x84000 -", "umount . 2", "chdir /"],
            sys.Calls);
        sys.Calls.Clear();
        setup.PivotRoot(noPivot: true);
        Assert.Equal(["chdir /r", "mount /r / - 0x2000 -", "chroot .", "chdir /"], sys.Calls);
    }

    [Fact]
    public void Finish_masks_and_protects_paths_and_makes_root_read_only()
    {
        var (sys, setup) = Make(s => { s.Linux!.MaskedPaths = ["/proc/kcore", "/sys/firmware"]; s.Linux.ReadonlyPaths =
            ["/proc/sys"]; s.Linux.Sysctl = new() { ["net.ipv4.ip_forward"] = "1" }; });
        sys.Files.Add("/proc/kcore");
        sys.Directories.Add("/sys/firmware");
        sys.Directories.Add("/proc/sys");
        setup.Finish();
        Assert.Equal(
        [
            "write /proc/sys/net/ipv4/ip_forward 1",
            "mount /proc/sys /proc/sys - 0x5000 -",
            "mount none /proc/sys - 0x102f -",
            "mount /dev/null /proc/kcore - 0x1000 -",
            "mount tmpfs /sys/firmware tmpfs 0x1 -",
            "mount none / - 0x1021 -",
        ], sys.Calls);
    }

    [Fact]
    public void A_failing_mount_surfaces_the_errno()
    {
        var (sys, setup) = Make();
        sys.FailOn["mount"] = Errors.ENODEV;
        var e = Assert.Throws<LinuxException>(() =>
            setup.MountOne(new Mount { Destination = "/x", Source = "none", Type = "nosuchfs" }));
        Assert.Equal(Errors.ENODEV, e.Errno);
        Assert.Contains("/r/x", e.Message);
    }
}

public class SecurePathTests
{
    [Fact]
    public void Symlinks_cannot_escape_the_root()
    {
        var links = new Dictionary<string, string> { ["/r/etc"] = "/../../host/etc", ["/r/a"] = "../../b",
            ["/r/b/c"] = "/d" };
        string? Read(string p) => links.TryGetValue(p, out var t) ? t : null;
        Assert.Equal("/r/host/etc/passwd", SecurePath.Join("/r", "/etc/passwd", Read));
        Assert.Equal("/r/b", SecurePath.Join("/r", "/a", Read));
        Assert.Equal("/r/d/e", SecurePath.Join("/r", "/a/c/e", Read));
        Assert.Equal("/r/x", SecurePath.Join("/r", "/../../x", Read));
    }

    [Fact]
    public void A_symlink_loop_is_an_error()
    {
        var e = Assert.Throws<ContainerException>(() =>
            SecurePath.Join("/r", "/loop", p => p == "/r/loop" ? "/loop" : null));
        Assert.Contains("too many symlinks", e.Message);
    }
}

public class SpecValidatorTests
{
    static Spec Valid(Action<Spec> edit)
    {
        var s = DefaultSpec.Create(["sh"], false);
        s.Root!.Path = "/tmp"; // any directory but the host root
        edit(s);
        return s;
    }

    [Theory]
    [InlineData("unknown namespace type \"net\"")]
    public void Unknown_namespace(string expected)
    {
        var e = Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Linux!.Namespaces!.Add(new Namespace { Type = "net" })), "/"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Duplicate_namespace() =>
        Assert.Contains("listed twice", Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Linux!.Namespaces!.Add(new Namespace { Type = "pid" })), "/")).Message);

    [Fact]
    public void Mappings_without_user_namespace() =>
        Assert.Contains("no user namespace", Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Linux!.UidMappings = [new IdMapping { Size = 1 }]), "/")).Message);

    [Fact]
    public void Unknown_capability() =>
        Assert.Contains("CAP_FLY", Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Process!.Capabilities!.Bounding!.Add("CAP_FLY")), "/")).Message);

    [Fact]
    public void Rlimit_soft_above_hard() =>
        Assert.Contains("above the hard limit",
            Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Process!.Rlimits =
            [new Rlimit { Type = "RLIMIT_NOFILE", Soft = 10, Hard = 5 }]), "/")).Message);

    [Fact]
    public void Host_sysctl_is_refused() =>
        Assert.Contains("vm.swappiness", Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Linux!.Sysctl = new() { ["vm.swappiness"] = "1" }), "/")).Message);

    [Fact]
    public void Relative_mount_destination() =>
        Assert.Contains("absolute", Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Mounts!.Add(new Mount { Destination = "data", Type = "tmpfs" })),
            "/")).Message);

    [Fact]
    public void Unknown_bind_option() =>
        Assert.Contains("rbindd", Assert.Throws<InvalidSpecException>(() =>
            SpecValidator.Validate(Valid(s => s.Mounts!.Add(
            new Mount { Destination = "/d", Source = "/", Type = "bind", Options = ["rbindd"] })), "/")).Message);

    [Fact]
    public void The_default_spec_is_valid() => SpecValidator.Validate(Valid(_ => { }), "/");
}
