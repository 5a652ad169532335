using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Hull.Api;
using Hull.Sdk;
using Hull.TestSupport;
using Xunit;

namespace Hull.Daemon.Tests;

/// <summary>
/// Request size limits, a full state disk, upload spools and the small error bugs of the security run: each test
/// does the bad thing for real through a running hulld.
/// </summary>
[Collection("daemon")]
public sealed class LimitsTests
{
    /// <summary>A raw HTTP client on hulld's socket (the SDK would refuse to send most of these).</summary>
    static HttpClient Raw(TestDaemon d) => new(new SocketsHttpHandler
    {
        ConnectCallback = async (_, ct) =>
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await s.ConnectAsync(new UnixDomainSocketEndPoint(d.Socket), ct);
            return new NetworkStream(s, ownsSocket: true);
        },
    }) { BaseAddress = new Uri("http://hulld/"), Timeout = TimeSpan.FromMinutes(2) };

    static async Task<(int Status, ErrorResponse? Error, string Body)> Send(HttpClient h, HttpMethod m, string path,
        HttpContent? body = null,
        bool expectContinue = false)
    {
        var req = new HttpRequestMessage(m, path) { Content = body };
        req.Headers.ExpectContinue = expectContinue;
        using var resp = await h.SendAsync(req);
        var text = await resp.Content.ReadAsStringAsync();
        ErrorResponse? err = null;
        try { err = JsonSerializer.Deserialize(text, HullJson.Default.ErrorResponse); } catch (JsonException) { }
        return ((int)resp.StatusCode, err, text);
    }

    static long Rss(int pid) =>
        long.Parse(File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:")).Split(' ',
            StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;

    /// <summary>A body of n bytes that is one huge JSON string value, sent chunked (no Content-Length) or with a
    /// length.</summary>
    sealed class HugeJson(long n, bool chunked) : HttpContent
    {
        protected override async Task SerializeToStreamAsync(Stream s, TransportContext? context)
        {
            var head = Encoding.UTF8.GetBytes("{\"name\":\"big\",\"image\":\"busybox\",\"config\":{\"user.x\":\"");
            await s.WriteAsync(head);
            var chunk = Encoding.ASCII.GetBytes(new string('a', 65536));
            for (long sent = head.Length; sent < n - 4; sent += chunk.Length)
                await s.WriteAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, n - 4 - sent)));
            await s.WriteAsync("\"}}"u8.ToArray());
        }

        protected override bool TryComputeLength(out long length)
        {
            length = n - 1;
            return !chunked;
        }
    }

    [SkippableFact]
    public async Task Oversized_bodies_are_refused_with_413_naming_the_limit_and_hulld_stays_small()
    {
        using var d = new TestDaemon(extraArgs: ["--max-upload", "1MiB"]);
        using var h = Raw(d);
        await d.Client.LaunchAsync("busybox", "lim");
        var rss0 = Rss(d.Pid);

        // 100 MiB of JSON: a client that waits for "100 Continue" gets the 413 before it sends the body; one that
        // sends it at once (declared or chunked) is cut off at the 4 MiB JSON limit.
        var (st, err, _) = await Send(h, HttpMethod.Post, "1.0/instances", new HugeJson(100L << 20, false),
            expectContinue: true);
        Assert.Equal(413, st);
        Assert.Contains("4MiB", err!.Error);
        Assert.Contains("--max-json-body", err.Error);
        foreach (var chunked in new[] { false, true })
        {
            try
            {
                (st, err, _) = await Send(h, HttpMethod.Post, "1.0/instances", new HugeJson(100L << 20, chunked));
                Assert.Equal(413, st);
                Assert.Contains("--max-json-body", err!.Error);
            }
            catch (HttpRequestException) { } // the reply came while the client still wrote: it saw the cut
        }
        Assert.DoesNotContain(await d.Client.ListInstancesAsync(), i => i.Name == "big");
        Assert.True(Rss(d.Pid) < rss0 + (64L << 20), $"hulld grew from {rss0 >> 20} MiB to {Rss(d.Pid) >> 20} MiB");
        Assert.True(new FileInfo(Path.Combine(d.StateDir, "hull.db")).Length < 4 << 20);

        // Uploads have their own limit (set to 1 MiB here): an image, a backup, a pushed file.
        foreach (var (path, type) in new[] { ("1.0/images", "application/octet-stream"),
            ("1.0/instances", "application/x-tar"),
                     ("1.0/instances/lim/files?path=/tmp/big", "application/octet-stream") })
        {
            var c = new ByteArrayContent(new byte[2 << 20]);
            c.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue(type);
            (st, err, var body) = await Send(h, HttpMethod.Post, path, c, expectContinue: true);
            Assert.True(st == 413, $"{path}: {st} {body}");
            Assert.Contains("1MiB", err!.Error);
            Assert.Contains("--max-upload", err.Error);
        }
        var pe = await Assert.ThrowsAsync<HullException>(() =>
            d.Client.PushFileAsync("lim", "/tmp/big", new byte[2 << 20]));
        Assert.Equal(413, pe.StatusCode);
        Assert.Contains("--max-upload", pe.Message);
        // No spool is left behind by a refused upload.
        Assert.Empty(Directory.GetFiles(Path.Combine(d.StateDir, "images"), "tmp-*"));
        Assert.Empty(Directory.GetFiles(Path.Combine(d.StateDir, "instances"), ".tmp-*"));
        // Under the limit, an upload works.
        await d.Client.PushFileAsync("lim", "/tmp/small", new byte[100 << 10]);
        Assert.Equal(100 << 10, (await d.Client.ReadFileAsync("lim", "/tmp/small")).Length);
    }

    [SkippableFact]
    public async Task Config_and_device_sizes_are_bounded()
    {
        using var d = new TestDaemon();
        var c = d.Client;
        async Task Refused(Dictionary<string, string>? config, Dictionary<string, Dictionary<string, string>>? devices,
            string fragment)
        {
            var e = await Assert.ThrowsAsync<HullException>(() => c.CreateInstanceAsync(new InstanceCreateRequest
            { Name = "cfg", Image = "busybox", Config = config ?? [], Devices = devices ?? [] }));
            Assert.Equal(400, e.StatusCode);
            Assert.Contains(fragment, e.Message);
        }
        await Refused(Enumerable.Range(0, 1100).ToDictionary(i => $"user.k{i}", _ => "v"), null, "limit of 1024");
        await Refused(new() { ["user." + new string('k', 300)] = "v" }, null, "at most 256");
        await Refused(new() { ["user.big"] = new string('v', 70000) }, null, "larger than 64 KiB");
        await Refused(null, Enumerable.Range(0, 70).ToDictionary(i => $"d{i}", i => new Dictionary<string, string>
            { ["type"] = "bind", ["source"] = "/tmp", ["path"] = $"/mnt/{i}" }), "limit of 64");
        await Refused(null, new() { ["d"] = new() { ["type"] = "bind", ["source"] = "/tmp/" + new string('x', 5000),
            ["path"] = "/mnt" } },
            "at most 4096");
        await Assert.ThrowsAsync<HullException>(() => c.CreateProfileAsync(new ProfileCreateRequest
        { Name = "p", Config = Enumerable.Range(0, 1100).ToDictionary(i => $"user.k{i}", _ => "v") }));
        Assert.DoesNotContain(await c.ListInstancesAsync(), i => i.Name == "cfg");
    }

    [SkippableFact]
    public async Task Collected_exec_output_is_bounded_and_nul_bytes_are_refused()
    {
        using var d = new TestDaemon();
        var c = d.Client;
        await c.LaunchAsync("busybox", "ex");
        var rss0 = Rss(d.Pid);
        var e = await Assert.ThrowsAsync<HullException>(() => c.ExecAsync("ex", "yes", new string('y', 4000)));
        Assert.Equal(413, e.StatusCode);
        Assert.Contains("16MiB", e.Message);
        Assert.True(Rss(d.Pid) < rss0 + (256L << 20), $"hulld grew from {rss0 >> 20} MiB to {Rss(d.Pid) >> 20} MiB");

        e = await Assert.ThrowsAsync<HullException>(() => c.ExecAsync("ex", "echo", "a\0b"));
        Assert.Equal(400, e.StatusCode);
        Assert.Contains("command[1] contains a NUL byte", e.Message);
        e = await Assert.ThrowsAsync<HullException>(() =>
            c.ExecAsync("ex", new ExecRequest { Command = ["env"], Environment = { ["A"] = "x\0y" } }));
        Assert.Equal(400, e.StatusCode);
        Assert.Contains("environment variable 'A' contains a NUL byte", e.Message);
    }

    [SkippableFact]
    public async Task Unknown_routes_and_json_type_errors_get_the_error_json_in_user_terms()
    {
        using var d = new TestDaemon();
        using var h = Raw(d);
        var (st, err, body) = await Send(h, HttpMethod.Get, "1.0/nothing-here");
        Assert.Equal(404, st);
        Assert.NotNull(err);
        Assert.Equal(404, err!.ErrorCode);
        Assert.Contains("GET /1.0/nothing-here", err.Error);
        (st, err, body) = await Send(h, HttpMethod.Patch, "1.0/instances");
        Assert.Equal(405, st);
        Assert.Contains("PATCH /1.0/instances", err!.Error);

        await d.Client.LaunchAsync("busybox", "js");
        (st, err, body) = await Send(h, HttpMethod.Put, "1.0/instances/js/state",
            new StringContent("{\"action\": \"stop\", \"timeout\": \"soon\"}", Encoding.UTF8, "application/json"));
        Assert.Equal(400, st);
        Assert.Contains("field 'timeout' must be a whole number", err!.Error);
        Assert.DoesNotContain("System.", err.Error);
        (st, err, body) = await Send(h, HttpMethod.Post, "1.0/instances",
            new StringContent("{\"name\": \"x\", \"config\": [1]}", Encoding.UTF8, "application/json"));
        Assert.Equal(400, st);
        Assert.Contains("field 'config' must be an object", err!.Error);
        Assert.DoesNotContain("System.", err.Error);
    }

    [SkippableFact]
    public async Task Deleting_an_imported_image_succeeds_without_an_error()
    {
        using var d = new TestDaemon();
        using var root = new TempDir();
        Directory.CreateDirectory(Path.Combine(root.Path, "etc"));
        File.WriteAllText(Path.Combine(root.Path, "etc", "hostname"), "tiny\n");
        var tar = new MemoryStream();
        System.Formats.Tar.TarFile.CreateFromDirectory(root.Path, tar, includeBaseDirectory: false);
        tar.Position = 0;
        var img = await d.Client.ImportImageAsync(tar, alias: "tiny");
        // Was: exit 1 with "IO_PathNotFound" (500) after the image was already gone.
        var (code, _, err) = d.Cli("image", "delete", "tiny");
        Assert.True(code == 0 && err.Length == 0, err);
        Assert.DoesNotContain(await d.Client.ListImagesAsync(), i => i.Fingerprint == img.Fingerprint);
    }

    [SkippableFact]
    public async Task Upload_spools_are_removed_after_an_aborted_upload_and_swept_after_kill9()
    {
        using var d = new TestDaemon();
        var images = Path.Combine(d.StateDir, "images");
        // An upload that stops half-way: the client goes away.
        using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            s.Connect(new UnixDomainSocketEndPoint(d.Socket));
            s.Send(Encoding.ASCII.GetBytes("POST /1.0/images HTTP/1.1\r\nHost: hulld\r\nContent-Length: " +
                "10000000\r\n\r\n"));
            s.Send(new byte[1 << 20]);
            await Wait.UntilAsync(() => Task.FromResult(Directory.GetFiles(images, "tmp-upload-*").Length == 1),
                "the upload spool");
        }
        await Wait.UntilAsync(() => Task.FromResult(Directory.GetFiles(images, "tmp-upload-*").Length == 0),
            "the spool of the aborted upload to go");

        // kill -9 during an upload, and spools that an older hulld left: the restart sweeps them.
        File.WriteAllBytes(Path.Combine(images, "tmp-upload-0123456789ab"), new byte[4096]);
        File.WriteAllBytes(Path.Combine(d.StateDir, "instances", ".tmp-upload-0123456789ab"), new byte[4096]);
        d.Kill9();
        d.Start();
        Assert.Empty(Directory.GetFiles(images, "tmp-*"));
        Assert.Empty(Directory.GetFiles(Path.Combine(d.StateDir, "instances"), ".tmp-*"));
    }

    [SkippableFact]
    public async Task On_a_full_state_disk_launch_says_507_and_stop_exec_and_delete_still_work()
    {
        using var d = new TestDaemon(start: false);
        Directory.CreateDirectory(d.StateDir);
        Hull.Linux.Sys.Mount("tmpfs", d.StateDir, "tmpfs", 0, "size=64m,mode=0700");
        d.Start();
        var c = d.Client;
        await c.LaunchAsync("busybox", "runs");
        await c.CreateInstanceAsync(new InstanceCreateRequest { Name = "idle", Image = "busybox" });
        Assert.True(File.Exists(Path.Combine(d.StateDir, "hull.db.reserve")), "no reserve was made");

        // Fill the disk to the last byte.
        var fill = Path.Combine(d.StateDir, "fill");
        using (var f = new FileStream(fill, FileMode.Create))
        {
            var buf = new byte[1 << 20];
            try { while (true) f.Write(buf); } catch (IOException) { }
            try { while (true) f.Write(buf, 0, 4096); } catch (IOException) { }
            try { f.Flush(); } catch (IOException) { }
        }

        async Task Full(Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<HullException>(call);
            Assert.True(e.StatusCode == 507, $"{e.StatusCode}: {e.Message}");
            Assert.Contains("full", e.Message);
            Assert.Contains("free some space", e.Message);
        }
        await Full(() => c.LaunchAsync("busybox", "more"));
        Assert.DoesNotContain(await c.ListInstancesAsync(), i => i.Name == "more");
        await Full(() => c.CreateProfileAsync(new ProfileCreateRequest { Name = "p1" }));

        Assert.Equal("ok\n", (await c.ExecAsync("runs", "echo", "ok")).Stdout);
        await c.StopAsync("runs", force: true);
        Assert.Equal(InstanceStates.Stopped, (await c.GetInstanceAsync("runs")).State);
        await c.DeleteInstanceAsync("runs");
        await c.DeleteInstanceAsync("idle");
        Assert.Empty(await c.ListInstancesAsync());

        // With room again, work goes on and the reserve comes back.
        File.Delete(fill);
        await c.LaunchAsync("busybox", "after");
        await c.CreateProfileAsync(new ProfileCreateRequest { Name = "p2" });
        Assert.True(File.Exists(Path.Combine(d.StateDir, "hull.db.reserve")), "the reserve was not made again");
        await c.DeleteInstanceAsync("after", force: true);
    }
}
