using Hull.Api;
using Hull.Instances;
using Microsoft.AspNetCore.Http;

namespace Hull.Daemon;

/// <summary>POST /1.0/images/pull: pulls an image from an OCI (Docker v2) registry in an operation (progress in
/// bytes).</summary>
public static class RegistryApi
{
    public static async Task PullImage(Daemon d, HttpContext c)
    {
        ImagePullRequest req;
        try { req = await System.Text.Json.JsonSerializer.DeserializeAsync(c.Request.Body,
            HullJson.Default.ImagePullRequest, c.RequestAborted)
            ?? throw new InstanceException("the request body is empty: send a JSON object"); }
        catch (System.Text.Json.JsonException e)
        {
            throw new InstanceException($"the request body is not valid for this call: {Api.JsonError(e)}");
        }
        if (!Hull.Registry.ImageReference.TryParse(req.Reference, out var reference,
            out var error)) throw new InstanceException(error!);
        if (req.Alias is not null && !ConfigSchema.IsValidName(req.Alias, 128))
            throw new InstanceException($"image alias '{req.Alias}' is invalid: use letters, digits, '-', '_' or " +
                "'.', starting with a letter or digit");
        var op = d.Operations.Start($"pull image {reference}", ["/1.0/images"], mayCancel: true, async ctx =>
        {
            var img = await d.Images.PullAsync(req, ctx, ctx.Token);
            ctx.Result("fingerprint", img.Fingerprint);
        });
        c.Response.Headers.Location = $"/1.0/operations/{op.Id}";
        await Api.Ok(c, op, HullJson.Default.Operation, 202);
    }
}
