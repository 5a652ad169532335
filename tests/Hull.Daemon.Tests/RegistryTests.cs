using System.Text;
using Hull.Api;
using Hull.Registry;
using Hull.Sdk;
using Hull.TestSupport;
using Xunit;
using static Hull.TestSupport.RegistryTestUtil;
using static Hull.Daemon.Tests.ImageStoreLeftovers;

namespace Hull.Daemon.Tests;

/// <summary>Image references, auth challenges and auth files, parsed as docker and podman do.</summary>
public sealed class RegistryReferenceTests
{
    [Theory]
    [InlineData("127.0.0.1:5000/busybox", "127.0.0.1:5000", "busybox", "latest", null)]
    [InlineData("localhost/a/b:1.0", "localhost", "a/b", "1.0", null)]
    [InlineData("registry.example.com/team/app:v2-rc.1", "registry.example.com", "team/app", "v2-rc.1", null)]
    [InlineData("busybox", "docker.io", "library/busybox", "latest", null)]
    [InlineData("alpine:3.19", "docker.io", "library/alpine", "3.19", null)]
    [InlineData("someone/tool", "docker.io", "someone/tool", "latest", null)]
    [InlineData("[::1]:5000/x", "[::1]:5000", "x", "latest", null)]
    [InlineData("r.io:443/a__b/c-d.e@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "r.io:443", "a__b/c-d.e", null, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")]
    public void Parses_references(string text, string registry, string repo, string? tag, string? digest)
    {
        var r = ImageReference.Parse(text);
        Assert.Equal(registry, r.Registry);
        Assert.Equal(repo, r.Repository);
        Assert.Equal(tag, r.Tag);
        Assert.Equal(digest, r.Digest);
        Assert.Equal(r, ImageReference.Parse(r.ToString()));
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("127.0.0.1:5000/Busybox", "invalid repository")]
    [InlineData("127.0.0.1:5000/bb:", "invalid tag")]
    [InlineData("127.0.0.1:5000/bb:-x", "invalid tag")]
    [InlineData("127.0.0.1:99999/bb", "invalid registry")]
    [InlineData("127.0.0.1:5000/", "names no repository")]
    [InlineData("127.0.0.1:5000/a//b", "invalid repository")]
    [InlineData("x/y@sha256:abc", "invalid digest")]
    [InlineData("x/y@md5:0123", "invalid digest")]
    [InlineData("a b", "spaces")]
    public void Rejects_bad_references_naming_the_problem(string text, string message)
    {
        var e = Assert.Throws<RegistryException>(() => ImageReference.Parse(text));
        Assert.Contains(message, e.Message);
        Assert.Equal(400, e.Status);
    }

    [Fact]
    public void Loopback_registries_use_http()
    {
        Assert.True(ImageReference.Parse("127.0.0.1:5000/a").IsLoopback);
        Assert.True(ImageReference.Parse("localhost:5000/a").IsLoopback);
        Assert.True(ImageReference.Parse("[::1]:5000/a").IsLoopback);
        Assert.False(ImageReference.Parse("registry.example.com/a").IsLoopback);
        using var c = new RegistryClient(ImageReference.Parse("registry.example.com/a"));
        Assert.Equal("https", c.BaseUri.Scheme);
        using var i = new RegistryClient(ImageReference.Parse("registry.example.com/a"), insecure: true);
        Assert.Equal("http", i.BaseUri.Scheme);
        using var h = new RegistryClient(ImageReference.Parse("busybox"));
        Assert.Equal("https://registry-1.docker.io/v2/", h.BaseUri.ToString());
    }

    [Fact]
    public void Parses_auth_challenges()
    {
        var p = RegistryClient.ParseChallenge(
            "realm=\"https://auth.example.com/token\",service=\"registry.example.com\"," +
            "scope=\"repository:a/b:pull,push\"");
        Assert.Equal("https://auth.example.com/token", p["realm"]);
        Assert.Equal("registry.example.com", p["service"]);
        Assert.Equal("repository:a/b:pull,push", p["scope"]);
        var q = RegistryClient.ParseChallenge("realm=\"with \\\"quotes\\\", and commas\", error=insufficient_scope");
        Assert.Equal("with \"quotes\", and commas", q["realm"]);
        Assert.Equal("insufficient_scope", q["error"]);
    }

    [Fact]
    public void Reads_auth_json()
    {
        using var t = new TempDir();
        var f = Path.Combine(t.Path, "auth.json");
        File.WriteAllText(f, "{\"auths\":{\"https://r.example.com:5000\":{\"auth\":\""
            + Convert.ToBase64String(Encoding.UTF8.GetBytes("alice:pa:ss"))
            + "\"},\"other.io\":{\"username\":\"bob\",\"password\":\"pw\"}}}");
        Assert.Equal(("alice", "pa:ss"), AuthFileReader.Find(f, "r.example.com:5000"));
        Assert.Equal(("bob", "pw"), AuthFileReader.Find(f, "other.io"));
        Assert.Null(AuthFileReader.Find(f, "nowhere.io"));
        File.WriteAllText(f, "{not json");
        Assert.Contains("not valid auth.json", Assert.Throws<RegistryException>(() =>
            AuthFileReader.Find(f, "x")).Message);
    }
}

/// <summary>
/// Pulls through a real hulld from Debian's docker-registry (no auth, token auth with a token server run by the test,
/// htpasswd Basic auth), and from a registry double for what a real registry will not do (corrupt blobs).
/// </summary>
[Collection("daemon")]
public sealed class RegistryPullTests
{
    static void RequireTools()
    {
        Requires.Program("docker-registry");
        Requires.Program("skopeo");
        Requires.Program("umoci");
    }

    static async Task<Operation> PullOp(TestDaemon d, ImagePullRequest req) =>
        await d.Client.WaitAsync(await d.Client.PullImageOperationAsync(req));

    [SkippableFact]
    public async Task Pull_launch_exec_and_reuse_cached_layers()
    {
        RequireTools();
        using var d = new TestDaemon();
        var layout = BuildBusyboxLayout(d.Dir);
        using var reg = new DockerRegistry(Path.Combine(d.Dir, "registry"));
        Push(layout, "v1", $"{reg.Host}/hull/busybox:v1");
        Push(layout, "v2", $"{reg.Host}/hull/busybox:v2");

        // CLI pull with an alias; the reference becomes an alias too.
        var r = d.Cli("image", "pull", $"{reg.Host}/hull/busybox:v1", "--alias", "bb1");
        Assert.True(r.Code == 0, r.Err + r.Out + reg.Log);
        Assert.Contains("Image pulled with fingerprint:", r.Out);
        var img = await d.Client.GetImageAsync("bb1");
        Assert.Contains($"{reg.Host}/hull/busybox:v1", img.Aliases);
        Assert.Contains($"pulled from {reg.Host}/hull/busybox:v1 (sha256:", img.Description);
        Assert.Single(StoreLeftovers(d).Blobs);

        // Launch straight from a reference not pulled yet: v2 shares v1's layer, so only its new layer is fetched.
        var launch = await d.Client.WaitAsync(await d.Client.CreateInstanceOperationAsync(new InstanceCreateRequest
        {
            Name = "c2", Image = $"{reg.Host}/hull/busybox:v2", Type = InstanceTypes.Container, Start = true,
        }));
        Assert.Equal("1", launch.Metadata!["layers_fetched"]);
        Assert.Equal("1", launch.Metadata["layers_cached"]);
        var ex = d.Cli("exec", "c2", "--", "sh", "-c", "cat /etc/hull-release; ls /bin/busybox");
        Assert.True(ex.Code == 0, ex.Err);
        Assert.Equal("pulled-v2\n/bin/busybox\n", ex.Out);
        Assert.Equal(2, StoreLeftovers(d).Blobs.Count);

        // Launching v1 by reference (CLI) uses the stored image: nothing is fetched.
        var before = reg.Log.Split('\n').Count(l => l.Contains("GET /v2/hull/busybox/", StringComparison.Ordinal));
        Assert.True(before > 0, reg.Log);
        var info = d.Cli("image", "info", $"{reg.Host}/hull/busybox:v1");
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains(img.Fingerprint, info.Out);
        var l1 = d.Cli("launch", $"{reg.Host}/hull/busybox:v1", "c1");
        Assert.True(l1.Code == 0, l1.Err);
        Assert.Equal("ok\n", (await d.Client.ExecAsync("c1", "sh", "-c",
            "cat /etc/hull-release 2>/dev/null; echo ok")).Stdout);
        Assert.Equal(before, reg.Log.Split('\n').Count(l =>
            l.Contains("GET /v2/hull/busybox/", StringComparison.Ordinal)));

        // Pulling v1 again asks for the manifest but fetches no layer.
        var again = await PullOp(d, new ImagePullRequest { Reference = $"{reg.Host}/hull/busybox:v1" });
        Assert.Equal("0", again.Metadata!["layers_fetched"]);
        Assert.Equal(img.Fingerprint, again.Metadata["fingerprint"]);

        // Unknown tag and repository are named.
        var images = (await d.Client.ListImagesAsync()).Count;
        var noTag = d.Cli("image", "pull", $"{reg.Host}/hull/busybox:nope");
        Assert.NotEqual(0, noTag.Code);
        Assert.Contains($"tag 'nope' not found in {reg.Host}/hull/busybox", noTag.Err);
        var noRepo = d.Cli("launch", $"{reg.Host}/hull/missing", "c3");
        Assert.NotEqual(0, noRepo.Code);
        Assert.Contains("not found", noRepo.Err);
        Assert.Contains("hull/missing", noRepo.Err);
        Assert.DoesNotContain(await d.Client.ListInstancesAsync(), i => i.Name == "c3");
        Assert.Equal(images, (await d.Client.ListImagesAsync()).Count);
        Assert.Empty(StoreLeftovers(d).Work);

        // Deleting images releases their layers: v2's own layer goes with it, the shared one stays for v1.
        await d.Client.DeleteInstanceAsync("c2", force: true);
        var del = d.Cli("image", "delete", $"{reg.Host}/hull/busybox:v2");
        Assert.True(del.Code == 0, del.Err);
        Assert.DoesNotContain(await d.Client.ListImagesAsync(), i => i.Aliases.Contains($"{reg.Host}/hull/busybox:v2"));
        Assert.Single(StoreLeftovers(d).Blobs);
        await d.Client.DeleteInstanceAsync("c1", force: true);
        Assert.Equal(0, d.Cli("image", "alias", "delete", $"{reg.Host}/hull/busybox:v1").Code);
        Assert.Equal(["bb1"], (await d.Client.GetImageAsync("bb1")).Aliases);
        await d.Client.DeleteImageAsync("bb1");
        Assert.Empty(StoreLeftovers(d).Blobs);
    }

    [SkippableFact]
    public async Task Token_auth_and_basic_auth()
    {
        RequireTools();
        Requires.Program("htpasswd");
        using var d = new TestDaemon();
        var layout = BuildBusyboxLayout(d.Dir);
        var images = (await d.Client.ListImagesAsync()).Count;

        // Token auth: docker-registry trusts tokens signed by the test's token server.
        using (var tokens = new TokenServer("alice", "s3cret"))
        {
            var cert = Path.Combine(d.Dir, "token-cert.pem");
            File.WriteAllText(cert, tokens.CertificatePem);
            using var reg = new DockerRegistry(Path.Combine(d.Dir, "registry-token"), tokens.RegistryAuthYaml(cert));
            Push(layout, "v1", $"{reg.Host}/team/bb:v1", "alice:s3cret");
            var reference = $"{reg.Host}/team/bb:v1";

            var anon = d.Cli("image", "pull", reference);
            Assert.NotEqual(0, anon.Code);
            Assert.Contains($"{reg.Host} needs credentials", anon.Err);
            var wrong = d.Cli("image", "pull", reference, "--username", "alice", "--password", "wrong");
            Assert.NotEqual(0, wrong.Code);
            Assert.Contains("refused the credentials of user 'alice'", wrong.Err);
            Assert.Equal(images, (await d.Client.ListImagesAsync()).Count);
            Assert.Equal((0, 0), (StoreLeftovers(d).Work.Count, StoreLeftovers(d).Blobs.Count));

            var authfile = Path.Combine(d.Dir, "auth.json");
            File.WriteAllText(authfile, "{\"auths\":{\"" + reg.Host + "\":{\"auth\":\""
                + Convert.ToBase64String(Encoding.UTF8.GetBytes("alice:s3cret")) + "\"}}}");
            var ok = d.Cli("image", "pull", reference, "--authfile", authfile, "--alias", "tokbb");
            Assert.True(ok.Code == 0, ok.Err + reg.Log);
            Assert.Contains(tokens.Requests, q => q.StartsWith("GET /token?", StringComparison.Ordinal)
                && q.Contains("scope=repository%3Ateam%2Fbb%3Apull", StringComparison.Ordinal));
            Assert.Equal(0, d.Cli("launch", reference, "tok1").Code);
            Assert.Equal("hi\n", (await d.Client.ExecAsync("tok1", "echo", "hi")).Stdout);
            await d.Client.DeleteInstanceAsync("tok1", force: true);
        }

        // Basic auth (htpasswd, bcrypt).
        var htpasswd = Path.Combine(d.Dir, "htpasswd");
        File.WriteAllText(htpasswd, Run("htpasswd", "-Bbn", "bob", "pw-bob"));
        using (var reg = new DockerRegistry(Path.Combine(d.Dir, "registry-basic"),
            $"  htpasswd:\n    realm: hull-test\n    path: {htpasswd}\n"))
        {
            Push(layout, "v2", $"{reg.Host}/bb:v2", "bob:pw-bob");
            var reference = $"{reg.Host}/bb:v2";
            var count = (await d.Client.ListImagesAsync()).Count;
            var anon = d.Cli("image", "pull", reference);
            Assert.NotEqual(0, anon.Code);
            Assert.Contains("needs credentials (Basic auth)", anon.Err);
            var wrong = d.CliIn("nope\n", "image", "pull", reference, "-u", "bob", "--password-stdin");
            Assert.NotEqual(0, wrong.Code);
            Assert.Contains("refused the credentials of user 'bob'", wrong.Err);
            Assert.Equal(count, (await d.Client.ListImagesAsync()).Count);
            var img = await d.Client.PullImageAsync(
                new ImagePullRequest { Reference = reference, Username = "bob", Password = "pw-bob" });
            Assert.Contains(reference, img.Aliases);
            await d.Client.LaunchAsync(reference, "basic1");
            Assert.Equal("pulled-v2\n", (await d.Client.ExecAsync("basic1", "cat", "/etc/hull-release")).Stdout);
            await d.Client.DeleteInstanceAsync("basic1", force: true);
        }
    }

    [SkippableFact]
    public async Task Corrupt_blobs_bad_platforms_and_unreachable_registries_leave_nothing()
    {
        using var d = new TestDaemon();
        var images = (await d.Client.ListImagesAsync()).Count;
        using var fake = new FakeRegistry();
        var config = Encoding.UTF8.GetBytes(
            "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}");
        var good = Encoding.UTF8.GetBytes(new string('a', 4096));
        var claimed = FakeRegistry.Digest(Encoding.UTF8.GetBytes("what the manifest promised"));
        fake.AddBlob("bad/img", FakeRegistry.Digest(config), config);
        fake.AddBlob("bad/img", FakeRegistry.Digest(good), good);
        fake.AddBlob("bad/img", claimed, Encoding.UTF8.GetBytes("something else entirely!!!"));
        string Manifest(params byte[][] layers)
        {
            string Desc(string mediaType, string digest, long size) =>
                "{\"mediaType\":\"" + mediaType + "\",\"digest\":\"" + digest + "\",\"size\":" + size + "}";
            return "{\"schemaVersion\":2,\"mediaType\":\"" + MediaTypes.OciManifest + "\",\"config\":"
                + Desc("application/vnd.oci.image.config.v1+json", FakeRegistry.Digest(config), config.Length)
                    + ",\"layers\":["
                + string.Join(",", layers.Select(l =>
                    Desc("application/vnd.oci.image.layer.v1.tar", l.Length == 0 ? claimed : FakeRegistry.Digest(l),
                    l.Length == 0 ? 26 : l.Length)))
                + "]}";
        }
        // An index whose linux/amd64 manifest has a good layer, then one whose content does not match its digest.
        var m = fake.AddManifest("bad/img", "manifest", MediaTypes.OciManifest, Manifest(good, []));
        fake.AddManifest("bad/img", "v1", MediaTypes.OciIndex, $$$"""
            {"schemaVersion":2,"mediaType":"{{{MediaTypes.OciIndex}}}","manifests":[
              {"mediaType":"{{{MediaTypes.OciManifest}}}","digest":"sha256:{{{new string('0', 64)}}}","size":10,"platform":{"architecture":"arm64","os":"linux"}},
              {"mediaType":"{{{MediaTypes.OciManifest}}}","digest":"{{{m}}}","size":{{{Encoding.UTF8.GetByteCount(Manifest(good, []))}}},"platform":{"architecture":"amd64","os":"linux"}}]}
            """);
        var r = d.Cli("image", "pull", $"{fake.Host}/bad/img:v1");
        Assert.NotEqual(0, r.Code);
        Assert.Contains($"blob {claimed} from {fake.Host}/bad/img failed verification", r.Err);
        Assert.Contains("nothing was kept", r.Err);
        Assert.Contains(fake.Requests, q => q == $"GET /v2/bad/img/blobs/{FakeRegistry.Digest(good)}");
        Assert.Equal(images, (await d.Client.ListImagesAsync()).Count);
        Assert.Equal((0, 0), (StoreLeftovers(d).Work.Count, StoreLeftovers(d).Blobs.Count));

        // The same through launch: no instance is left.
        var l = d.Cli("launch", $"{fake.Host}/bad/img:v1", "bad1");
        Assert.NotEqual(0, l.Code);
        Assert.Contains("failed verification", l.Err);
        Assert.Empty(await d.Client.ListInstancesAsync());

        // An index with no linux/amd64 image names what it has.
        fake.AddManifest("bad/img", "arm", MediaTypes.OciIndex, $$$"""
            {"schemaVersion":2,"manifests":[{"mediaType":"{{{MediaTypes.OciManifest}}}","digest":"{{{m}}}","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}
            """);
        var arm = d.Cli("image", "pull", $"{fake.Host}/bad/img:arm");
        Assert.NotEqual(0, arm.Code);
        Assert.Contains("has no linux/amd64 image (it has: linux/arm64/v8)", arm.Err);

        // A download cancelled half way (progress counts its bytes) leaves nothing.
        var stallDigest = FakeRegistry.Digest(Encoding.UTF8.GetBytes("never completely sent"));
        fake.AddStallingBlob("bad/img", stallDigest, new byte[3 << 20], 8 << 20);
        fake.AddManifest("bad/img", "stall", MediaTypes.OciManifest,
            "{\"schemaVersion\":2,\"mediaType\":\"" + MediaTypes.OciManifest
            + "\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\""
                + FakeRegistry.Digest(config) + "\",\"size\":" + config.Length
            + "},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\""
                + FakeRegistry.Digest(good) + "\",\"size\":" + good.Length
            + "},{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"" + stallDigest + "\",\"size\":"
                + (8 << 20) + "}]}");
        var pull = await d.Client.PullImageOperationAsync(
            new ImagePullRequest { Reference = $"{fake.Host}/bad/img:stall" });
        Assert.True(pull.MayCancel);
        await Wait.UntilAsync(async () => (await d.Client.GetOperationAsync(pull.Id)).Progress?.Contains(
            " MiB of 8.0 MiB (", StringComparison.Ordinal) == true, "byte progress of the stalled layer");
        Assert.Contains("layer 2/2", (await d.Client.GetOperationAsync(pull.Id)).Progress);
        await d.Client.CancelOperationAsync(pull.Id);
        var cancelled = await d.Client.WaitOperationAsync(pull.Id);
        Assert.Equal(OperationStatus.Cancelled, cancelled.Status);
        Assert.Equal(images, (await d.Client.ListImagesAsync()).Count);
        Assert.Equal((0, 0), (StoreLeftovers(d).Work.Count, StoreLeftovers(d).Blobs.Count));

        // Nothing listening.
        var port = FreePort();
        var down = d.Cli("image", "pull", $"127.0.0.1:{port}/x/y:1");
        Assert.NotEqual(0, down.Code);
        Assert.Contains($"cannot reach the registry at http://127.0.0.1:{port}", down.Err);
        var bad = d.Cli("image", "pull", "127.0.0.1:5000/UPPER");
        Assert.NotEqual(0, bad.Code);
        Assert.Contains("invalid repository", bad.Err);
        var apiBad = await Assert.ThrowsAsync<HullException>(() =>
            d.Client.PullImageOperationAsync(new ImagePullRequest { Reference = "x/y@sha256:12" }));
        Assert.Equal(400, apiBad.StatusCode);
        Assert.Equal(images, (await d.Client.ListImagesAsync()).Count);
        Assert.Equal((0, 0), (StoreLeftovers(d).Work.Count, StoreLeftovers(d).Blobs.Count));
    }
}
