using Hull.Api;
using Hull.TestSupport;
using Xunit;
using static Hull.TestSupport.RegistryTestUtil;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// An OCI image runs as its author meant: a pulled image's Entrypoint + Cmd with its Env, WorkingDir and User (names
/// from the image's own /etc/passwd and /etc/group), stopped with its StopSignal; Podman's overrides (-- CMD,
/// --entrypoint, -e, -w, -u) win; ExposedPorts are listed by hull image info.
/// </summary>
public sealed class ImageRunConfigTests
{
    /// <summary>A busybox image whose author made it an HTTP server on port 8000, run as user "web" from
    /// /srv/www, that says goodbye on SIGUSR1 (its stop signal).</summary>
    static string BuildServerLayout(string dir)
    {
        var layout = BuildBusyboxLayout(dir);
        var extra = Path.Combine(dir, "web-extra");
        Directory.CreateDirectory(Path.Combine(extra, "etc"));
        Directory.CreateDirectory(Path.Combine(extra, "srv", "www"));
        Directory.CreateDirectory(Path.Combine(extra, "home", "web"));
        File.WriteAllText(Path.Combine(extra, "etc", "passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1234:1234:web:/home/web:/bin/sh\n");
        File.WriteAllText(Path.Combine(extra, "etc", "group"), "root:x:0:\nweb:x:1234:\nwww:x:777:web\n");
        File.WriteAllText(Path.Combine(extra, "srv", "www", "index.html"), "served by the image\n");
        Run("umoci", "insert", "--image", layout + ":v1", extra, "/");
        Run("umoci", "config", "--image", layout + ":v1", "--config.entrypoint", "/bin/sh",
            "--config.entrypoint", "-c",
            "--config.cmd", "trap 'echo \"$GREETING: stopping\"; exit 0' USR1; httpd -p 8000 -h /srv/www; " +
                "echo \"$GREETING from $(id -u):$(id -g) ($(id -G)) in $(pwd), HOME=$HOME\"; " +
                "while :; do sleep 1 & wait $!; done",
            "--config.env", "GREETING=hello", "--config.env", "PATH=/bin", "--config.user", "web",
            "--config.workingdir", "/srv/www", "--config.exposedports", "8000/tcp", "--config.stopsignal", "SIGUSR1");
        return layout;
    }

    [SkippableFact]
    public async Task A_pulled_image_runs_its_entrypoint_and_cmd_as_its_user_and_stops_with_its_signal()
    {
        Requires.Program("docker-registry");
        Requires.Program("skopeo");
        Requires.Program("umoci");
        using var d = new ContainerDaemon();
        var layout = BuildServerLayout(d.Dir);
        using var reg = new DockerRegistry(Path.Combine(d.Dir, "registry"));
        var reference = $"{reg.Host}/hull/web:v1";
        Push(layout, "v1", reference);

        var launch = d.Cli("launch", reference, "w1");
        Assert.True(launch.Code == 0, launch.Err);
        var info = (await d.Client.GetImageAsync(reference)).Config;
        Assert.NotNull(info);
        Assert.Equal(["8000/tcp"], info.ExposedPorts);
        Assert.Equal(["/bin/sh", "-c"], info.Entrypoint);
        Assert.Contains("exposed_ports:\n    - 8000/tcp", d.Cli("image", "info", reference).Out);

        // The image's settings are the instance's own keys, for hull config to show and change.
        var config = (await d.Client.GetInstanceAsync("w1")).Config;
        Assert.Equal("[\"/bin/sh\",\"-c\"]", config["oci.entrypoint"]);
        Assert.Equal(("web", "/srv/www", "SIGUSR1", "hello"),
            (config["oci.user"], config["oci.cwd"], config["oci.stopsignal"], config["environment.GREETING"]));

        await LogShowsAsync(d, "w1", "hello from");
        Assert.Contains("hello from 1234:1234 (1234 777) in /srv/www, HOME=/home/web", await LogsAsync(d, "w1"));
        // The server the Cmd started answers, and execs run as the image's user in its working directory.
        var get = await d.Client.ExecAsync("w1", "wget", "-qO-", "http://127.0.0.1:8000/index.html");
        Assert.Equal("served by the image\n", get.Stdout);
        Assert.Equal("1234 /srv/www\n", (await d.Client.ExecAsync("w1", "sh", "-c", "echo $(id -u) $(pwd)")).Stdout);
        var asRoot = d.Cli("exec", "--user", "root", "w1", "--", "id");
        Assert.True(asRoot.Code == 0, asRoot.Err);
        Assert.Equal("uid=0(root) gid=0(root)\n", asRoot.Out);
        var ghost = d.Cli("exec", "--user", "ghost", "w1", "--", "id");
        Assert.NotEqual(0, ghost.Code);
        Assert.Contains("user 'ghost' is not in the container's /etc/passwd", ghost.Err);

        // hull stop sends SIGUSR1, which the command traps: it ends at once with status 0, not after the timeout.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        Assert.Equal(0, d.Cli("stop", "w1").Code);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"stop took {sw.Elapsed}");
        Assert.Contains("hello: stopping", await LogsAsync(d, "w1"));
        Assert.Equal(0, (await d.Client.GetInstanceAsync("w1")).LastExitCode);

        // Podman's overrides: -- CMD replaces Cmd (after the Entrypoint), -e, -w and -u win over the image's.
        var w2 = d.Cli("launch", reference, "w2", "-e", "GREETING=hi", "-e", "EXTRA=1", "-w", "/", "-u", "0:www",
            "--", "echo \"$GREETING $EXTRA $(id -u):$(id -g) $(pwd)\"");
        Assert.True(w2.Code == 0, w2.Err);
        await LogShowsAsync(d, "w2", "hi 1 0:777 /\n");
        // --entrypoint replaces the Entrypoint and drops the image's Cmd.
        var w3 = d.Cli("launch", reference, "w3", "--entrypoint", "/bin/echo", "--", "plain", "args");
        Assert.True(w3.Code == 0, w3.Err);
        await LogShowsAsync(d, "w3", "plain args\n");
        // A user the image does not have is refused with its name.
        var w4 = d.Cli("launch", reference, "w4", "-u", "nobody");
        Assert.NotEqual(0, w4.Code);
        Assert.Contains("user 'nobody' is not in the container's /etc/passwd", w4.Err);
        var w5 = d.Cli("launch", reference, "w5", "-c", "oci.stopsignal=SIGNOPE");
        Assert.NotEqual(0, w5.Code);
        Assert.Contains("oci.stopsignal='SIGNOPE' is invalid", w5.Err);
        foreach (var n in new[] { "w1", "w2", "w3", "w4" }) await d.Client.DeleteInstanceAsync(n, force: true);
    }

    /// <summary>Waits until the instance's console log holds <paramref name="text"/>; a timeout shows the log and the
    /// instance's state.</summary>
    static async Task LogShowsAsync(ContainerDaemon d, string name, string text)
    {
        for (var i = 0; i < 100; i++)
        {
            if ((await LogsAsync(d, name)).Contains(text, StringComparison.Ordinal)) return;
            await Task.Delay(100);
        }
        var inst = await d.Client.GetInstanceAsync(name);
        Assert.Fail($"the log of {name} never showed \"{text}\"; it holds \"{await LogsAsync(d, name)}\"; the " +
            $"instance is {inst.State} ({inst.StatusMessage}, exit {inst.LastExitCode})");
    }

    static async Task<string> LogsAsync(ContainerDaemon d, string name)
    {
        await using var s = await d.Client.LogsAsync(name);
        return await new StreamReader(s).ReadToEndAsync();
    }
}
