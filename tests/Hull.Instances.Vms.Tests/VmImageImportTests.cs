using Hull.TestSupport;
using Xunit;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// hull image import --vm refuses what no VM can boot, naming what it found, and leaves nothing behind: a text file,
/// a truncated qcow2, a tar that is no Hull VM bundle. A raw disk with a partition table is taken.
/// </summary>
public sealed class VmImageImportTests
{
    [SkippableFact]
    public async Task Files_that_are_no_disk_image_are_refused_with_what_was_found()
    {
        VmDaemon.RequireVmHost();
        using var d = new VmDaemon();
        var before = (await d.Client.ListImagesAsync()).Count;
        string F(string name) => Path.Combine(d.Dir, name);

        File.WriteAllText(F("junk.img"), "this is not a VM\n");
        var junk = d.Cli("image", "import", F("junk.img"), "--vm");
        Assert.NotEqual(0, junk.Code);
        Assert.Contains("the file is not a VM disk image: 17 bytes of text with no qcow2 header", junk.Err);

        RegistryTestUtil.Run("qemu-img", "create", "-q", "-f", "qcow2", F("whole.qcow2"), "64M");
        using (var whole = File.OpenRead(F("whole.qcow2")))
        using (var cut = File.Create(F("cut.qcow2")))
        {
            var head = new byte[300];
            whole.ReadExactly(head);
            cut.Write(head);
        }
        var truncated = d.Cli("image", "import", F("cut.qcow2"), "--vm");
        Assert.NotEqual(0, truncated.Code);
        Assert.Contains("the qcow2 image is damaged or truncated (qemu-img check:", truncated.Err);

        Directory.CreateDirectory(F("t"));
        File.WriteAllText(Path.Combine(d.Dir, "t", "readme"), "no manifest\n");
        RegistryTestUtil.Run("tar", "-cf", F("plain.tar"), "-C", F("t"), "readme");
        var tar = d.Cli("image", "import", F("plain.tar"), "--vm");
        Assert.NotEqual(0, tar.Code);
        Assert.Contains("a tar file without a hull-vm-image manifest", tar.Err);

        Assert.Equal(before, (await d.Client.ListImagesAsync()).Count);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(d.StateDir, "images"), "tmp-*"));

        // A raw disk with an MBR (boot signature 55 aa), and a whole qcow2, are taken.
        var raw = new byte[1 << 20];
        raw[510] = 0x55;
        raw[511] = 0xaa;
        File.WriteAllBytes(F("mbr.img"), raw);
        Assert.Equal(0, d.Cli("image", "import", F("mbr.img"), "--vm", "--alias", "mbr").Code);
        Assert.Equal(0, d.Cli("image", "import", F("whole.qcow2"), "--vm", "--alias", "q").Code);
        Assert.Equal(before + 2, (await d.Client.ListImagesAsync()).Count);
    }

    [SkippableFact]
    public async Task An_iso_is_attached_as_a_cd_rom_the_firmware_boots_it_and_its_power_off_is_exit_0()
    {
        VmDaemon.RequireVmHost();
        Requires.Program("grub-mkrescue");
        Requires.Program("xorriso");
        Requires.File("/usr/lib/grub/i386-pc/cdboot.img", "grub-pc-bin");
        using var d = new VmDaemon();
        var tree = Path.Combine(d.Dir, "iso", "boot", "grub");
        Directory.CreateDirectory(tree);
        File.WriteAllText(Path.Combine(tree, "grub.cfg"), "serial --unit=0 --speed=115200\nterminal_input serial\n" +
            "terminal_output serial\necho \"hull-iso-marker\"\nsleep 25\nhalt\n");
        var iso = Path.Combine(d.Dir, "media.iso");
        RegistryTestUtil.Run("grub-mkrescue", "-o", iso, Path.Combine(d.Dir, "iso"));
        Assert.Equal(0, d.Cli("image", "import", iso, "--vm", "--alias", "media").Code);
        var launch = d.Cli("launch", "media", "m1", "--vm", "-c", "limits.memory=128MiB");
        Assert.True(launch.Code == 0, launch.Err);
        // Where KVM cannot run the guest, the launch says it fell back to emulation, and why.
        if ((await d.Client.GetStateAsync("m1")).Details?.GetValueOrDefault("accelerator") == "tcg")
            Assert.Contains("hull: m1 runs under TCG emulation, not KVM: ", launch.Err);
        var log = "";
        for (var i = 0; i < 300 && !log.Contains("hull-iso-marker", StringComparison.Ordinal); i++)
        {
            await Task.Delay(200);
            log = d.Cli("logs", "m1").Out;
        }
        Assert.Contains("Booting from DVD/CD", log);
        Assert.Contains("hull-iso-marker", log);
        // GRUB runs no Hull agent: exec fails soon after the start, saying why, instead of waiting minutes.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var exec = d.Cli("exec", "m1", "--", "true");
        Assert.NotEqual(0, exec.Code);
        Assert.Contains("no Hull agent answered in VM 'm1'", exec.Err);
        Assert.Contains("use 'hull console m1'", exec.Err);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(25), $"exec took {sw.Elapsed} to give up");
        // GRUB's halt powers the machine off: a clean end (exit code 0), not a kill (137).
        await Wait.UntilAsync(async () => (await d.Client.GetInstanceAsync("m1")).State == "Stopped",
            "the guest's power-off");
        Assert.Equal(0, (await d.Client.GetInstanceAsync("m1")).LastExitCode);
        await d.Client.DeleteInstanceAsync("m1", force: true);
    }
}
