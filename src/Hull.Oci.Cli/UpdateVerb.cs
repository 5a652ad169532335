using System.Text.Json;

namespace Hull.Oci.Cli;

/// <summary>update: new resource limits for a running container, from --resources JSON (or - for stdin) or
/// flags.</summary>
static class UpdateVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "update", ["resources", "r", "memory", "memory-reservation", "memory-swap",
            "cpu-shares", "cpu-quota", "cpu-period", "cpuset-cpus", "cpuset-mems", "pids-limit", "blkio-weight"], []);
        if (a.Positional.Count != 1) throw new UsageException("update needs exactly one container id");
        Resources res;
        if ((a.Get("resources") ?? a.Get("r")) is { } file)
        {
            var json = file == "-" ? Console.In.ReadToEnd() : File.ReadAllText(file);
            try { res = JsonSerializer.Deserialize(json, OciCliJson.Default.Resources) ?? new Resources(); }
            catch (JsonException e) { throw new UsageException($"--resources {file}: invalid JSON: {e.Message}"); }
        }
        else res = new Resources();
        long? L(string n) => a.Get(n) is { } v ? (long.TryParse(v, out var x) ? x
            : throw new UsageException($"--{n} must be a number, not \"{v}\"")) : null;
        if (L("memory") is { } m) (res.Memory ??= new()).Limit = m;
        if (L("memory-reservation") is { } mr) (res.Memory ??= new()).Reservation = mr;
        if (L("memory-swap") is { } ms) (res.Memory ??= new()).Swap = ms;
        if (L("cpu-shares") is { } cs) (res.Cpu ??= new()).Shares = (ulong)cs;
        if (L("cpu-quota") is { } cq) (res.Cpu ??= new()).Quota = cq;
        if (L("cpu-period") is { } cp) (res.Cpu ??= new()).Period = (ulong)cp;
        if (a.Get("cpuset-cpus") is { } cc) (res.Cpu ??= new()).Cpus = cc;
        if (a.Get("cpuset-mems") is { } cm) (res.Cpu ??= new()).Mems = cm;
        if (L("pids-limit") is { } pl) res.Pids = new Pids { Limit = pl };
        if (L("blkio-weight") is { } bw) (res.BlockIo ??= new()).Weight = (ushort)bw;
        ctx.Engine.Update(a.Positional[0], res);
        return 0;
    }
}
