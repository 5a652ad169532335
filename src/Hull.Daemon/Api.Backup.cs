using Hull.Api;
using Hull.Instances;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Hull.Daemon;

/// <summary>Instance backups: GET /1.0/instances/{name}/backup streams one; POST /1.0/instances with a tarball body
/// imports one.</summary>
public sealed partial class Api
{
    /// <summary>The content type that makes POST /1.0/instances an import instead of a create.</summary>
    public const string BackupContentType = "application/x-tar";

    void MapBackups(IEndpointRouteBuilder app) =>
        Route(app, "GET", "/1.0/instances/{name}/backup", ExportInstance);

    async Task ExportInstance(HttpContext c)
    {
        try
        {
            await M.ExportAsync(Name(c), () =>
            {
                c.Response.StatusCode = 200;
                c.Response.ContentType = BackupContentType;
                return c.Response.Body;
            }, c.RequestAborted);
        }
        // Once the body has started an error cannot become a JSON reply: cut the connection so the reader sees a
        // truncated tarball.
        catch (Exception) when (c.Response.HasStarted) { c.Abort(); }
    }

    static bool IsBackupUpload(HttpContext c) =>
        c.Request.ContentType is { } t && t.StartsWith(BackupContentType, StringComparison.OrdinalIgnoreCase);

    /// <summary>Spools the uploaded backup, checks its index, then unpacks it in an operation whose result names the
    /// instance.</summary>
    async Task ImportInstance(HttpContext c)
    {
        var name = c.Request.Headers["X-Hull-Name"].ToString() is { Length: > 0 } n ? n : null;
        var start = QueryBool(c, "start");
        var spool = Path.Combine(d.Options.StateDir, "instances", ".tmp-upload-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            await SpoolAsync(c, spool);
            var b = await M.PrecheckImportAsync(spool, name, c.RequestAborted);
            var final = name ?? b.Name;
            var file = spool;
            var op = d.Operations.Start($"importing {final}", [$"/1.0/instances/{final}"], mayCancel: true, async ctx =>
            {
                try
                {
                    await M.ImportAsync(file, name, ctx, ctx.Token);
                    ctx.Result("name", final);
                }
                finally { File.Delete(file); }
                if (start) await M.StartAsync(final, ctx, ctx.Token);
            });
            spool = null; // the operation owns the file now
            await Accepted(c, op);
        }
        finally { if (spool is not null) File.Delete(spool); }
    }
}
