using System.CommandLine;
using System.Text.Json;
using Hull.Api;

namespace Hull.Cli;

/// <summary>operation and events: hulld's background operations and its event stream.</summary>
public static partial class CliApp
{
    static Command OperationCommand()
    {
        var operation = new Command("operation", "Long-running operations");
        var list = new Command("list", "List operations");
        Act(list, async (pr, c, ct) =>
        {
            var ops = await c.ListOperationsAsync(ct);
            if (Output.Structured(Format(pr), ops, Output.Pretty.ListOperation, Out)) return 0;
            Output.Table(Out, ["ID", "DESCRIPTION", "STATUS", "CREATED"],
                ops.Select(o => new[] { o.Id, o.Description, o.Status, Output.Time(o.CreatedAt) }));
            return 0;
        });
        operation.Subcommands.Add(list);
        var id = new Argument<string>("id");
        var wait = new Command("wait", "Wait for an operation to end") { id };
        Act(wait, async (pr, c, ct) =>
        {
            var op = await c.WaitOperationAsync(pr.GetValue(id)!, -1, ct);
            if (!Output.Structured(Format(pr), op, Output.Pretty.Operation, Out)) Out.WriteLine(
                $"{op.Id}: {op.Status}{(op.Error is null ? "" : " (" + op.Error + ")")}");
            return op.Status == OperationStatus.Success ? 0 : 1;
        });
        operation.Subcommands.Add(wait);
        var cid = new Argument<string>("id");
        var cancel = new Command("cancel", "Cancel an operation") { cid };
        Act(cancel, async (pr, c, ct) => { await c.CancelOperationAsync(pr.GetValue(cid)!, ct); return 0; });
        operation.Subcommands.Add(cancel);
        return operation;
    }

    static Command EventsCommand()
    {
        var type = new Option<string[]>("--type") { Description =
            "lifecycle, operation or logging (repeatable; default: all)" };
        var events = new Command("events", "Print the events stream as JSON lines") { type };
        Act(events, async (pr, c, ct) =>
        {
            var types = pr.GetValue(type) is { Length: > 0 } t ? t : null;
            await foreach (var e in c.EventsAsync(types, ct))
            {
                await Out.WriteLineAsync(JsonSerializer.Serialize(e, HullJson.Default.Event));
                await Out.FlushAsync(ct);
            }
            return 0;
        });
        return events;
    }
}
