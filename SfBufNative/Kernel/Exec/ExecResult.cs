using Native.PageTable;

namespace Native.SfBufNative.Kernel;

/// <summary>What a successful <see cref="Exec.Execve(SimKernel, string, out ExecResult?)"/> built.</summary>
public sealed class ExecResult
{
    internal ExecResult(ElfImage image, VmSpace vmspace, int mappedPages, int sharedPages, int fragmentCopies)
    {
        Image = image;
        VmSpace = vmspace;
        MappedPages = mappedPages;
        SharedPages = sharedPages;
        FragmentCopies = fragmentCopies;
    }

    /// <summary>The parsed image.</summary>
    public ElfImage Image { get; }

    /// <summary>The new address space; the calling thread now runs in it.</summary>
    public VmSpace VmSpace { get; }

    /// <summary><c>e_entry</c> as in the file.</summary>
    public ulong ElfEntry => Image.Entry;

    /// <summary>The entry point in the new address space: <see cref="ElfEntry"/> plus <see cref="LoadBias"/>.</summary>
    public ulong Entry => Image.LoadBias + Image.Entry;

    /// <summary>Where a PIE was placed (<see cref="Exec.PieBase"/>), or 0 for <c>ET_EXEC</c>.</summary>
    public ulong LoadBias => Image.LoadBias;

    /// <summary><c>e_phnum</c>: program headers in the image.</summary>
    public int ProgramHeaders => Image.ProgramHeaderCount;

    /// <summary><c>PT_LOAD</c> program headers in the image.</summary>
    public int LoadSegments => Image.LoadSegments.Count;

    /// <summary>The initial stack pointer: the top of the stack (<c>USRSTACK</c>).</summary>
    public ulong StackPointer { get; } = Exec.StackTop;

    /// <summary>User pages mapped in the new space: the segments' pages (each once) plus the stack.</summary>
    public int MappedPages { get; }

    /// <summary>File pages mapped from the page cache, shared (read-only or copy-on-write), not copied.</summary>
    public int SharedPages { get; }

    /// <summary>
    /// Partial pages whose file bytes were copied into anonymous memory, each through one
    /// ephemeral mapping of the file page (the partial last page of a segment with a .bss, or a
    /// page two segments share, once per segment).
    /// </summary>
    public int FragmentCopies { get; }
}
