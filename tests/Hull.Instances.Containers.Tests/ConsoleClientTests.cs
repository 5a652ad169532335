using System.Diagnostics;
using System.Text;
using Hull.TestSupport;
using Xunit;

namespace Hull.Instances.Containers.Tests;

/// <summary>
/// hull console on a real terminal: Ctrl-C goes to the instance (the client does not die of it), Ctrl-a q detaches at
/// once, and when the instance stops the client says so and exits.
/// </summary>
public sealed class ConsoleClientTests
{
    static async Task<string> ReadUntilAsync(Process p, StringBuilder seen, string text, TimeSpan timeout)
    {
        var buf = new char[4096];
        using var cts = new CancellationTokenSource(timeout);
        while (!seen.ToString().Contains(text, StringComparison.Ordinal))
        {
            int n;
            try { n = await p.StandardOutput.ReadAsync(buf, cts.Token); }
            catch (OperationCanceledException) { break; }
            if (n == 0) break;
            seen.Append(buf, 0, n);
        }
        return seen.ToString();
    }

    [SkippableFact]
    public async Task Ctrl_c_reaches_the_instance_ctrl_a_q_detaches_at_once_and_a_stop_is_reported()
    {
        using var d = new ContainerDaemon();
        Assert.Equal(0, d.Cli("launch", "busybox", "c1").Code);

        using (var p = d.CliOnTerminal("console", "c1"))
        {
            var seen = new StringBuilder();
            Assert.Contains("To detach", await ReadUntilAsync(p, seen, "To detach", TimeSpan.FromSeconds(20)));
            p.StandardInput.Write("\x03");
            p.StandardInput.Flush();
            await Task.Delay(1000);
            Assert.False(p.HasExited, "Ctrl-C ended the console client instead of going to the instance");
            var sw = Stopwatch.StartNew();
            p.StandardInput.Write("\x01q");
            p.StandardInput.Flush();
            Assert.True(p.WaitForExit(5000), "Ctrl-a q did not detach");
            Assert.Equal(0, p.ExitCode);
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(2), $"Ctrl-a q took {sw.Elapsed} to detach");
        }

        using (var p = d.CliOnTerminal("console", "c1"))
        {
            var seen = new StringBuilder();
            await ReadUntilAsync(p, seen, "To detach", TimeSpan.FromSeconds(20));
            Assert.Equal(0, d.Cli("stop", "c1").Code);
            var text = await ReadUntilAsync(p, seen, "is stopped", TimeSpan.FromSeconds(20));
            Assert.Contains("hull: the console closed: c1 is stopped (exit code 0)", text);
            Assert.True(p.WaitForExit(5000), "the console client kept running after the instance stopped");
        }
    }
}
