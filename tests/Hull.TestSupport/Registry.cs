using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Xunit;

namespace Hull.TestSupport;

/// <summary>Test helpers for registry pulls: free ports, running programs, a busybox OCI layout.</summary>
public static class RegistryTestUtil
{
    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        var port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public static string Run(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(Requires.Program(program)) { RedirectStandardError = true,
            RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{program} {string.Join(' ', args)}: {err.Result}{output}");
        return output;
    }

    /// <summary>
    /// An OCI layout (written by umoci) with two tags: "v1" is a busybox root filesystem in one layer (the host's
    /// static
    /// /bin/busybox and its applet links), "v2" is v1 plus a layer adding /etc/hull-release.
    /// </summary>
    public static string BuildBusyboxLayout(string dir)
    {
        Requires.File("/bin/busybox", "busybox-static");
        var rootfs = Path.Combine(dir, "bb-rootfs");
        foreach (var d in new[] { "bin", "etc", "dev", "proc", "sys", "tmp", "root" }) Directory.CreateDirectory(
            Path.Combine(rootfs, d));
        File.Copy("/bin/busybox", Path.Combine(rootfs, "bin", "busybox"));
        foreach (var applet in Run("/bin/busybox", "--list").Split('\n',
            StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            if (applet != "busybox") File.CreateSymbolicLink(Path.Combine(rootfs, "bin", applet), "busybox");
        File.WriteAllText(Path.Combine(rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
        var layout = Path.Combine(dir, "layout");
        Run("umoci", "init", "--layout", layout);
        Run("umoci", "new", "--image", layout + ":v1");
        Run("umoci", "insert", "--image", layout + ":v1", rootfs, "/");
        Run("umoci", "tag", "--image", layout + ":v1", "v2");
        var extra = Path.Combine(dir, "bb-extra");
        Directory.CreateDirectory(extra);
        File.WriteAllText(Path.Combine(extra, "hull-release"), "pulled-v2\n");
        Run("umoci", "insert", "--image", layout + ":v2", extra, "/etc");
        return layout;
    }

    /// <summary>skopeo copy of a layout tag into a registry over plain http.</summary>
    public static void Push(string layout, string tag, string destination, string? creds = null)
    {
        var args = new List<string> { "--insecure-policy", "copy", "--dest-tls-verify=false" };
        if (creds is not null) { args.Add("--dest-creds"); args.Add(creds); }
        args.Add($"oci:{layout}:{tag}");
        args.Add($"docker://{destination}");
        Run("skopeo", [.. args]);
    }
}

/// <summary>Debian's docker-registry (distribution 2.8) on 127.0.0.1:PORT with its storage in a temp dir; killed and
/// removed at dispose.</summary>
public sealed class DockerRegistry : IDisposable
{
    readonly Process _proc;
    readonly StringBuilder _log = new();
    public string Dir { get; }
    public int Port { get; }
    public string Host => $"127.0.0.1:{Port}";

    /// <param name="auth">The YAML of the auth: section's body (indented by 2), or null for none.</param>
    public DockerRegistry(string dir, string? auth = null)
    {
        var exe = Requires.Program("docker-registry");
        Dir = dir;
        Directory.CreateDirectory(Path.Combine(dir, "storage"));
        Port = RegistryTestUtil.FreePort();
        var config = Path.Combine(dir, "config.yml");
        File.WriteAllText(config, $"""
            version: 0.1
            log:
              level: info
              accesslog:
                disabled: false
            storage:
              filesystem:
                rootdirectory: {Path.Combine(dir, "storage")}
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:{Port}
            {(auth is null ? "" : "auth:\n" + auth)}
            """);
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true,
            UseShellExecute = false };
        psi.ArgumentList.Add("serve");
        psi.ArgumentList.Add(config);
        _proc = Process.Start(psi)!;
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginOutputReadLine();
        _proc.BeginErrorReadLine();
        using var http = new HttpClient();
        for (var i = 0; ; i++)
        {
            if (_proc.HasExited) throw new InvalidOperationException(
                $"docker-registry exited with {_proc.ExitCode}: {Log}");
            try
            {
                using var r = http.GetAsync($"http://{Host}/v2/").GetAwaiter().GetResult();
                return;
            }
            catch (HttpRequestException) when (i < 200) { Thread.Sleep(50); }
        }
    }

    public string Log { get { lock (_log) return _log.ToString(); } }

    public void Dispose()
    {
        try { _proc.Kill(true); _proc.WaitForExit(); } catch (InvalidOperationException) { }
        _proc.Dispose();
        try { Directory.Delete(Dir, true); } catch (IOException) { }
    }
}
