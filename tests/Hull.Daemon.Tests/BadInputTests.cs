using Hull.Api;
using Hull.Sdk;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>Every bad-input case of the issue, through the SDK: a clear message, the right status, and nothing
/// half-made.</summary>
[Collection("daemon")]
public sealed class BadInputTests(SharedDaemon shared) : IClassFixture<SharedDaemon>
{
    HullClient C => shared.D.Client;

    async Task<HullException> Fails(Func<Task> call, int status, params string[] fragments)
    {
        var e = await Assert.ThrowsAsync<HullException>(call);
        Assert.Equal(status, e.StatusCode);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        return e;
    }

    async Task AssertNotCreated(string name)
    {
        Assert.DoesNotContain(await C.ListInstancesAsync(), i => i.Name == name);
        Assert.False(Directory.Exists(Path.Combine(shared.D.StateDir, "instances", name)),
            $"{name}'s directory was left behind");
    }

    Task<Instance> Create(string name, string image = "busybox", Dictionary<string, string>? config = null,
        List<string>? profiles = null,
        Dictionary<string, Dictionary<string, string>>? devices = null, string type = InstanceTypes.Container) =>
        C.CreateInstanceAsync(new InstanceCreateRequest { Name = name, Image = image, Config = config ?? [],
            Profiles = profiles, Devices = devices ?? [], Type = type });

    [SkippableFact]
    public async Task Unknown_instance_image_profile_and_key()
    {
        await Fails(() => C.GetInstanceAsync("ghost"), 404, "instance 'ghost' not found", "hull list");
        await Fails(() => C.StartAsync("ghost"), 404, "'ghost' not found");
        await Fails(() => C.ExecAsync("ghost", "true"), 404, "not found");
        await Fails(() => C.DeleteInstanceAsync("ghost"), 404, "not found");
        await Fails(() => C.ReadFileAsync("ghost", "/etc/passwd"), 404, "not found");

        await Fails(() => Create("bad-image", image: "no-such-image"), 404, "image 'no-such-image' not found",
            "hull image import", "busybox");
        await AssertNotCreated("bad-image");
        await Fails(() => Create("bad-profile", profiles: ["default", "nope"]), 404, "profile 'nope' not found",
            "hull profile list");
        await AssertNotCreated("bad-profile");
        await Fails(() => Create("bad-key", config: new() { ["limits.cpus"] = "2" }), 400,
            "unknown config key 'limits.cpus'", "did you mean limits.cpu", "valid keys are");
        await AssertNotCreated("bad-key");
        await Fails(() => Create("bad-dev", devices: new() { ["d"] = new() { ["type"] = "usb" } }), 400, "device 'd'",
            "valid types are disk, bind");
        await Fails(() => Create("bad-dev", devices: new() { ["d"] =
            new() { ["type"] = "bind", ["source"] = "/no/such/dir", ["path"] = "/x" } }), 400,
            "/no/such/dir does not exist");
        await AssertNotCreated("bad-dev");
        await Fails(() => C.GetProfileAsync("nope"), 404, "profile 'nope' not found");
        await Fails(() => C.GetImageAsync("nope"), 404, "image 'nope' not found");
        await Fails(() => C.GetSnapshotAsync("ghost", "s"), 404, "not found");
    }

    [SkippableFact]
    public async Task Invalid_values_name_the_valid_range()
    {
        await Fails(() => Create("v1", config: new() { ["limits.cpu"] = "0" }), 400, "limits.cpu='0' is invalid",
            "from 1 to 1024");
        await Fails(() => Create("v1", config: new() { ["limits.memory"] = "1KiB" }), 400,
            "limits.memory='1KiB' is invalid", "from 4MiB to 16TiB");
        await Fails(() => Create("v1", config: new() { ["limits.memory"] = "lots" }), 400, "limits.memory='lots'");
        await Fails(() => Create("v1", config: new() { ["limits.processes"] = "-5" }), 400, "limits.processes='-5'",
            "from 1 to 4194304");
        await Fails(() => Create("v1", config: new() { ["boot.autostart"] = "maybe" }), 400, "boot.autostart='maybe'",
            "true or false");
        await Fails(() => Create("v1", config: new() { ["environment.1BAD"] = "x" }), 400, "environment.1BAD");
        await Fails(() => Create("bad name!"), 400, "instance name 'bad name!' is invalid");
        await Fails(() => Create("v1", type: "toaster"), 400, "instance type 'toaster' is invalid", "container or vm");
        await AssertNotCreated("v1");

        await Create("valid");
        var i = await C.GetInstanceAsync("valid");
        i.Config["limits.cpu"] = "2000";
        await Fails(() => C.UpdateInstanceAsync("valid", new InstancePut { Config = i.Config, Profiles = i.Profiles }),
            400, "limits.cpu='2000'", "from 1 to 1024");
        Assert.False((await C.GetInstanceAsync("valid")).Config.ContainsKey("limits.cpu"));
        await Fails(() => C.ChangeStateAsync("valid", "explode"), 400, "state action 'explode' is unknown",
            "start, stop, restart, pause or resume");
        await Fails(() => C.ChangeStateAsync("valid", "stop", timeout: -7), 409, "already stopped");
        await Fails(() => C.CreateProfileAsync(
            new ProfileCreateRequest { Name = "p-bad", Config = { ["limits.memory"] = "0" } }), 400,
            "limits.memory='0'");
        await Fails(() => C.ExecAsync("valid", new ExecRequest { Command = [] }), 400, "no command given");
        await C.DeleteInstanceAsync("valid");
    }

    [SkippableFact]
    public async Task Name_clash_and_wrong_state()
    {
        await Create("clash");
        await Fails(() => Create("clash"), 409, "instance 'clash' already exists", "choose another name");
        await C.CreateProfileAsync(new ProfileCreateRequest { Name = "dup" });
        await Fails(() => C.CreateProfileAsync(new ProfileCreateRequest { Name = "dup" }), 409,
            "profile 'dup' already exists");
        await C.DeleteProfileAsync("dup");

        await Fails(() => C.StopAsync("clash"), 409, "already stopped");
        await Fails(() => C.PauseAsync("clash"), 409, "not running");
        await Fails(() => C.ResumeAsync("clash"), 409, "not paused");
        await Fails(() => C.RestartAsync("clash"), 409, "start it instead");
        await Fails(() => C.ExecAsync("clash", "true"), 409, "not running", "start it first");
        // Over the websocket too: the upgrade is refused with the error (not a 500 with an empty body), and the
        // console of a stopped instance says so (not "the console needs a websocket connection").
        await Fails(() => C.ExecInteractiveAsync("clash", new ExecRequest { Command = ["true"] }), 409, "not running");
        await Fails(() => C.ConsoleAsync("clash"), 409, "not running", "start it first");
        foreach (var path in new[] { "exec?request=%7B%22command%22%3A%5B%22true%22%5D%7D", "console" })
        {
            using var ws = new System.Net.WebSockets.ClientWebSocket();
            ws.Options.CollectHttpResponseDetails = true;
            using var handler = new System.Net.Http.SocketsHttpHandler
            {
                ConnectCallback = async (_, ct) =>
                {
                    var sock = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix,
                        System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
                    await sock.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(shared.D.Socket), ct);
                    return new System.Net.Sockets.NetworkStream(sock, ownsSocket: true);
                },
            };
            using var invoker = new HttpMessageInvoker(handler);
            await Assert.ThrowsAsync<System.Net.WebSockets.WebSocketException>(() =>
                ws.ConnectAsync(new Uri($"ws://hull/1.0/instances/clash/{path}"), invoker, CancellationToken.None));
            Assert.Equal(System.Net.HttpStatusCode.Conflict, ws.HttpStatusCode);
        }
        await C.StartAsync("clash");
        await Fails(() => C.StartAsync("clash"), 409, "already running");
        await Fails(() => C.ResumeAsync("clash"), 409, "not paused");
        await Fails(() => C.DeleteInstanceAsync("clash"), 409, "is running", "--force");
        await Create("other");
        await Fails(() => C.RenameInstanceAsync("other", "clash"), 409, "already exists");
        await Fails(() => C.RenameInstanceAsync("clash", "x2"), 409, "stop it before renaming");
        await C.DeleteInstanceAsync("clash", force: true);
        await C.DeleteInstanceAsync("other");
    }

    [SkippableFact]
    public async Task An_engine_failure_mid_launch_leaves_nothing()
    {
        await Fails(() => C.LaunchAsync("busybox", "broken", config: new() { ["user.test.fail-create"] = "1" }), 500,
            "injected engine failure");
        await AssertNotCreated("broken");
        // A start that fails (a bind source removed after create) rolls back to Stopped with the reason.
        var src = Path.Combine(shared.D.Dir, "vanishing");
        Directory.CreateDirectory(src);
        await Create("start-fails", devices: new() { ["d"] =
            new() { ["type"] = "bind", ["source"] = src, ["path"] = "/mnt/d" } });
        Directory.Delete(src);
        await Fails(() => C.StartAsync("start-fails"), 400, "device 'd'", "no longer exists");
        var i = await C.GetInstanceAsync("start-fails");
        Assert.Equal(InstanceStates.Stopped, i.State);
        Assert.Contains("no longer exists", i.StatusMessage);
        await C.DeleteInstanceAsync("start-fails");
    }
}
