using Hull.Containers;

namespace Hull.Oci.Cli;

/// <summary>events: with --stats one stats event; without, a stats event every --interval until the container
/// stops.</summary>
static class EventsVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        var a = Args.Parse(argv, "events", ["interval"], ["stats"]);
        if (a.Positional.Count != 1) throw new UsageException("events needs exactly one container id");
        var id = a.Positional[0];
        var interval = ParseInterval(a.Get("interval") ?? "5s");
        while (true)
        {
            if (ctx.Engine.Status(ctx.Engine.Store.Load(id)) == ContainerStatus.Stopped) return 0;
            Console.WriteLine(
                $"{{\"type\":\"stats\",\"id\":\"{id}\",\"data\":{ctx.Engine.StatsJson(id).ReplaceLineEndings("")}}}");
            if (a.Has("stats")) return 0;
            Thread.Sleep(interval);
        }
    }

    static TimeSpan ParseInterval(string s)
    {
        var unit = s.TrimStart("0123456789.".ToCharArray());
        var num = s[..^unit.Length];
        if (!double.TryParse(num, System.Globalization.CultureInfo.InvariantCulture, out var n) || n <= 0)
            throw new UsageException($"--interval {s}: use a duration such as 500ms, 5s or 1m");
        return unit switch
        {
            "ms" => TimeSpan.FromMilliseconds(n), "s" or "" => TimeSpan.FromSeconds(n), "m" => TimeSpan.FromMinutes(n),
            _ => throw new UsageException($"--interval {s}: use a duration such as 500ms, 5s or 1m"),
        };
    }
}
