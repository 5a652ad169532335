using System.Diagnostics;
using System.Text.Json;

namespace Hull.Oci.Cli;

/// <summary>ps: the processes in a container's cgroup (JSON: pids; table: ps(1) output for those pids).</summary>
static class PsVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "ps", ["format", "f"], [], stopAtFirstPositionalAfter: true);
        if (a.Positional.Count < 1) throw new UsageException("ps needs a container id");
        var pids = ctx.Engine.Pids(a.Positional[0]).ToList();
        var format = a.Get("format") ?? a.Get("f") ?? "table";
        if (format == "json") { Console.WriteLine(
            JsonSerializer.Serialize(pids, OciCliJson.Default.ListInt32)); return 0; }
        if (format != "table") throw new UsageException($"--format {format}: use table or json");
        Console.WriteLine($"{"PID",-8} {"STAT",-5} COMMAND");
        foreach (var pid in pids)
        {
            string cmd, stat = "?";
            try
            {
                cmd = File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim();
                stat = Hull.Linux.ProcFs.Stat(pid)?.State.ToString() ?? "?";
            }
            catch (IOException) { continue; }
            Console.WriteLine($"{pid,-8} {stat,-5} {cmd}");
        }
        return 0;
    }
}
