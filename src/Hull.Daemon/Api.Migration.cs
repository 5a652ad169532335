using Hull.Api;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Hull.Daemon;

/// <summary>Live migration between hullds: incoming (target), send (source), finish (target). See
/// InstanceManager.Migration.</summary>
public sealed partial class Api
{
    void MapMigration(IEndpointRouteBuilder app)
    {
        Route(app, "POST", "/1.0/instances/{name}/migration/incoming", async c =>
            await Ok(c, await M.PrepareIncomingAsync(Name(c), await Body(c, J.MigrationIncomingRequest),
                c.RequestAborted), J.MigrationTarget, 201));
        Route(app, "POST", "/1.0/instances/{name}/migration/send", async c =>
        {
            var name = Name(c);
            var req = await Body(c, J.MigrationSendRequest);
            M.Running(name);
            var op = d.Operations.Start($"migrating {name}", [$"/1.0/instances/{name}"], mayCancel: true,
                ctx => M.SendAsync(name, req.Uri, ctx, ctx.Token));
            await Accepted(c, op);
        });
        Route(app, "POST", "/1.0/instances/{name}/migration/finish", async c =>
        {
            var req = await Body(c, J.MigrationFinishRequest);
            if (await M.FinishIncomingAsync(Name(c), req.Succeeded, c.RequestAborted) is { } inst) await Ok(c, inst,
                J.Instance);
            else await NoContent(c);
        });
    }
}
