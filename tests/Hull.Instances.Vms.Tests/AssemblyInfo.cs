[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
// Each test runs its own hulld with real VMs; on a 2-core host one at a time is enough.
[assembly: Xunit.CollectionBehavior(DisableTestParallelization = true)]
