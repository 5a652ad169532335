using Hull.Api;
using Hull.Instances;
using Hull.Instances.Vms;
using Xunit;

namespace Hull.Instances.Vms.Tests;

/// <summary>
/// The VM driver's failure paths, in process and without booting a guest: what it refuses, and that a failed
/// create leaves nothing behind. (The real lifecycle is in <see cref="VmDriverTests"/>.)
/// </summary>
public sealed class VmDriverFailureTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("hull-vmdriver-").FullName;
    readonly VmDriver _driver;
    static readonly CancellationToken None = CancellationToken.None;

    public VmDriverFailureTests() =>
        _driver = new VmDriver(new VmDriverOptions { CacheDir = Path.Combine(_dir, "cache") });

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    InstanceSpec Spec(string name, Dictionary<string, string>? config = null, string? image = null,
        Dictionary<string, Dictionary<string, string>>? devices = null)
    {
        config ??= [];
        return new InstanceSpec
        {
            Name = name, Type = InstanceTypes.Vm, Dir = Path.Combine(_dir, "instances", name),
            Image = new ImageRef
            {
                Fingerprint = "f", Type = InstanceTypes.Vm, File = image ?? Path.Combine(_dir, "none"),
            },
            Limits = ConfigSchema.ParseLimits(config), Environment = ConfigSchema.ParseEnvironment(config),
            Config = config, Devices = DeviceFactory.CreateAll(devices ?? [], validate: false),
        };
    }

    [Theory]
    [InlineData("limits.processes", "100", "limits.processes applies to containers only")]
    [InlineData("limits.memory", "32MiB", "is too small for a VM: give at least 64 MiB")]
    [InlineData("limits.memory", "16TiB", "is more than this host has")]
    public void Validate_refuses_what_a_vm_cannot_have(string key, string value, string message)
    {
        var e = Assert.Throws<InstanceException>(() => _driver.Validate(Spec("v1", new() { [key] = value })));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Validate_refuses_a_bind_device_and_a_directory_as_a_disk()
    {
        var bind = Spec("v1",
            devices: new() { ["share"] = new() { ["type"] = "bind", ["source"] = _dir, ["path"] = "/mnt" } });
        Assert.Contains("(a bind device) with VM 'v1' is not supported yet",
            Assert.Throws<InstanceException>(() => _driver.Validate(bind)).Message);
        var disk = Spec("v1",
            devices: new() { ["data"] = new() { ["type"] = "disk", ["source"] = _dir, ["path"] = "/mnt" } });
        Assert.Contains($"device 'data': source {_dir} is a directory",
            Assert.Throws<InstanceException>(() => _driver.Validate(disk)).Message);
    }

    [Fact]
    public async Task A_create_from_a_vanished_image_fails_and_leaves_no_vm_dir()
    {
        var spec = Spec("v1");
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.CreateAsync(spec, None));
        Assert.Contains("is gone", e.Message);
        Assert.False(Directory.Exists(Path.Combine(spec.Dir, "vm")));
    }

    [Fact]
    public async Task A_create_from_a_disk_image_that_does_not_open_fails_and_leaves_no_vm_dir()
    {
        var image = Path.Combine(_dir, "broken.qcow2");
        await File.WriteAllBytesAsync(image, [(byte)'Q', (byte)'F', (byte)'I', 0xfb, 0, 0, 0, 3, 1, 2, 3]);
        var spec = Spec("v1", image: image);
        var e = await Assert.ThrowsAsync<InstanceException>(() => _driver.CreateAsync(spec, None));
        Assert.Contains("v1", e.Message);
        Assert.False(Directory.Exists(Path.Combine(spec.Dir, "vm")));
    }

    [Fact]
    public async Task Operations_on_an_instance_without_a_vm_definition_say_so()
    {
        var spec = Spec("v1");
        Directory.CreateDirectory(spec.Dir);
        var start = await Assert.ThrowsAsync<InstanceException>(() => _driver.StartAsync(spec, [], None));
        Assert.Contains("has no VM definition", start.Message);
        Assert.Equal(500, start.Status);
        var snap = await Assert.ThrowsAsync<InstanceException>(() => _driver.CreateSnapshotAsync(spec, "s1", None));
        Assert.Contains("has no VM definition", snap.Message);
        // Stop, state and delete of what is not there succeed: nothing runs, nothing is left.
        Assert.Null(await _driver.StopAsync(spec, force: true, TimeSpan.Zero, None));
        Assert.Equal(InstanceState.Stopped, (await _driver.GetStateAsync(spec, None)).State);
        Directory.CreateDirectory(Path.Combine(spec.Dir, "vm", "leftover"));
        await _driver.DeleteAsync(spec, None);
        Assert.False(Directory.Exists(Path.Combine(spec.Dir, "vm")));
    }
}
