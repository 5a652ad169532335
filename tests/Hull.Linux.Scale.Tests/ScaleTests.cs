using Hull.Linux;
using Hull.TestSupport;
using Xunit;

namespace Hull.Linux.Scale.Tests;

public class MountPointTests
{
    [Fact]
    public void Root_and_proc_are_mount_roots_a_plain_dir_is_not()
    {
        Assert.True(MountPoint.IsMountRoot("/"));
        Assert.True(MountPoint.IsMountRoot("/proc"));
        using var dir = new TempDir();
        Assert.False(MountPoint.IsMountRoot(dir.Path));
        Assert.False(MountPoint.IsMountRoot(Path.Combine(dir.Path, "missing")));
        Assert.False(MountPoint.IsMountRoot(Path.Combine(dir.Path, "missing", "deeper")));
    }

    [SkippableFact]
    public void Sees_a_mount_appear_and_go()
    {
        Requires.Root();
        using var dir = new TempDir();
        Assert.False(MountPoint.IsMountRoot(dir.Path));
        Sys.Mount("tmpfs", dir.Path, "tmpfs", 0, "size=64k");
        try
        {
            Assert.True(MountPoint.IsMountRoot(dir.Path));
            Directory.CreateDirectory(Path.Combine(dir.Path, "sub"));
            Assert.False(MountPoint.IsMountRoot(Path.Combine(dir.Path, "sub")));
        }
        finally { Libc.umount2(dir.Path, MS.MNT_DETACH); }
        Assert.False(MountPoint.IsMountRoot(dir.Path));
    }
}
