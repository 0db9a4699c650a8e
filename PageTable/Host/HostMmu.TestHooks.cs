namespace Native.PageTable;

/// <summary>White-box views of the host backend for tests: the native resources it holds.</summary>
internal sealed unsafe partial class HostMmu
{
    /// <summary>The memfd descriptor.</summary>
    internal int MemoryFile => _fd;

    /// <summary>Host address range of the kernel regions.</summary>
    internal (nint Start, nuint Bytes) KernelRange => ((nint)_kernel, _kernelBytes);

    /// <summary>Host address range of physical memory (the direct map).</summary>
    internal (nint Start, nuint Bytes) DirectMapRange => ((nint)DirectMap, (nuint)_physicalBytes);
}
