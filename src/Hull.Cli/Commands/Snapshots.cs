using System.CommandLine;
using Hull.Api;

namespace Hull.Cli;

/// <summary>snapshot: take, list, restore and delete an instance's snapshots.</summary>
public static partial class CliApp
{
    static Command SnapshotCommand()
    {
        var snapshot = new Command("snapshot", "Snapshots of an instance's root filesystem and config");
        {
            var name = NameArg();
            var snap = new Argument<string>("snapshot") { Description = "Snapshot name (default: snapN)",
                Arity = ArgumentArity.ZeroOrOne };
            var create = new Command("create", "Take a snapshot") { name, snap };
            Act(create, async (pr, c, ct) =>
            {
                var n = pr.GetValue(name)!;
                var s = pr.GetValue(snap);
                if (string.IsNullOrEmpty(s))
                {
                    var existing = (await c.ListSnapshotsAsync(n, ct)).Select(x => x.Name).ToHashSet();
                    var k = 0;
                    while (existing.Contains($"snap{k}")) k++;
                    s = $"snap{k}";
                }
                await c.CreateSnapshotAsync(n, s, ct);
                return 0;
            });
            snapshot.Subcommands.Add(create);
        }
        {
            var name = NameArg();
            var snap = new Argument<string>("snapshot");
            var restore = new Command("restore", "Restore a stopped instance from a snapshot") { name, snap };
            Act(restore, async (pr, c, ct) => { await c.RestoreSnapshotAsync(pr.GetValue(name)!, pr.GetValue(snap)!,
                ct); return 0; });
            snapshot.Subcommands.Add(restore);
        }
        {
            var name = NameArg();
            var list = new Command("list", "List snapshots") { name };
            Act(list, async (pr, c, ct) =>
            {
                var ss = await c.ListSnapshotsAsync(pr.GetValue(name)!, ct);
                if (Output.Structured(Format(pr), ss, Output.Pretty.ListSnapshot, Out)) return 0;
                Output.Table(Out, ["NAME", "TAKEN AT"], ss.Select(s => new[] { s.Name, Output.Time(s.CreatedAt) }));
                return 0;
            });
            snapshot.Subcommands.Add(list);
        }
        {
            var name = NameArg();
            var snap = new Argument<string>("snapshot");
            var del = new Command("delete", "Delete a snapshot") { name, snap };
            Act(del, async (pr, c, ct) => { await c.DeleteSnapshotAsync(pr.GetValue(name)!, pr.GetValue(snap)!,
                ct); return 0; });
            snapshot.Subcommands.Add(del);
        }
        return snapshot;
    }
}
