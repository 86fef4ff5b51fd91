"""Region translator: hot guest code → one compiled Python function.

Speed without a second source of semantics: code is built by taking the
source of each instruction's `isa.execute_<mnemonic>`, specialising it with
the decoded fields (AST rewrite), and gluing the results together:

- `s.x[i.rs1]` becomes a Python local `x<n>` (the constant 0 for x0), loaded
  at entry and written back at exit, so registers live in locals.
- `i.<field>`, `s.pc` and isa's constants (M, trap causes) become constants;
  constant folding and propagation then remove what they decide (jump
  targets, alignment checks), and a few identities that hold for values in
  [0, 2**32) shorten the rest (`signed(a) < signed(b)` compares biased
  values, `x + 0 & M` is `x`).
- `s.load` / `s.store` become two subscripts: the page map of the current
  address space (see core.py, keyed by page base) indexed by the address
  masked with the page and alignment bits, then the page's byte, halfword or
  word view. A TLB miss, an absent or read-only page and a misaligned
  address are all a missing key: the KeyError hands that one instruction to
  the interpreter, whose slow path does it exactly (or stops).
- `return t` (a control transfer) becomes `npc = t`, the block's exit; the
  usual folded shapes (branch on a condition, jump to a constant) become
  `pc = a if cond else b` / `pc = a`.

A basic block ends at a control transfer, at the end of its page, or before
an instruction that must see exact core state (`isa.SERIALIZING`). A region
is the entry block plus the blocks reachable from it by static successors
(branch targets, fall-through, jal targets) that have already run, whether
or not another region holds them too: a `while True` loop dispatches on `pc`
between them (a binary search), so a loop with branches inside never leaves
Python locals. The code after a block is a tree: a static exit to a block of
the region carries a copy of it, skipping the dispatch; a loop header runs
its tree inside a `while True` of its own, whose back edges are `continue`,
so an iteration of a loop costs no dispatch at all (`_RegionBuilder`). A
block left out because it was still cold makes its region be rebuilt around
it once it is hot (`Core._translate_at`).

Generated signature: `region(core, budget) -> retired`; it starts at
`core.pc` (any of its block starts) and sets `core.pc`. A block runs only if
it fits in what is left of the budget, so quanta are exact. Along a tree,
`pc` and the count of retired instructions are set only where the tree
leaves or loops. If an instruction stops (trap, page miss), the slow path
raises `Fault`, the region writes back its registers, points pc at that
instruction and returns how many retired before it: the stop is precise.
Which instruction it was, and how many retired before it on its path, are
read from the traceback's line number (every line of an instruction that
may stop is tagged `# @<pc>,<retired>`), so the hot path stores nothing for it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import operator
import re

from nodes.cpu import isa
from nodes.cpu.fault import Fault

MAX_BLOCK = 64  # instructions per basic block; bounds budget granularity
MAX_REGION_BLOCKS = 32  # basic blocks per region; bounds compile time and dispatch
REGION_HEAT = 4  # times a successor must have run to join a region (at most half the hot threshold)
# Blocks up to this many instructions are copied into their predecessors (see
# `_RegionBuilder`): for them the dispatch is a large share of the cost, and the
# copies stay small to compile.
INLINE_MAX = 12
INLINE_DEPTH = 2  # a copy may carry copies of its own successors: deeper costs more to compile than it saves
LOOP_TREE_MAX = 192  # instructions in the tree of a loop's body, copies included: bounds compile time

# Memory access inline: one dict subscript finds the page, one view subscript
# the value. The maps are keyed by page base address; masking the address
# with the page bits plus the access's alignment bits makes a misaligned
# address a key no map holds, so alignment, TLB and presence are all checked
# by that one subscript, and a miss is a KeyError (see `_compile`).
#
# The masks are negative numbers of one CPython digit (-4096 is ~0xFFF, the
# same low 32 bits as 0xFFFFF000): `&` of two one-digit ints is a fast path,
# while 0xFFFFF000 is two digits, and every `&` with it takes the slow general
# one. An address that is not in [0, 2**32) (a base plus an offset that
# wrapped) keeps bits a 32-bit mask would drop, so it is a key no map holds,
# and the slow path wraps it. The stack is above 2**30 (two digits anyway),
# where a negative mask costs one more allocation: accesses based on sp use
# the positive masks (`_stack_keys`).
_PAGE_KEY = {1: -0x1000, 2: -0xFFF, 4: -0xFFD}
_STACK_KEY = re.compile(r"\[(x2|\(_ma := x2 [^\]]*?\)) & (-\d+)\]")
_OFFSET = {1: "{m} & 4095", 2: "({m} & 4095) >> 1", 4: "({m} & 4095) >> 2"}


_MAY_STOP = re.compile(r"TRAP\(|\b[RW][124]\[")
_STOP_TAG = re.compile(r"  # k=(\d+)$")
_STOP_AT = re.compile(r"  # @(\d+),(\d+)$")


def _address(node: ast.expr) -> str:
    """Source of an access's address; `e & M` is just `e`.

    The page key and the offset mask the address with constants below 2**32
    anyway, so wrapping it to 32 bits first changes nothing (the address is
    `register + unsigned immediate`, never negative).
    """
    if (
        isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd)
        and isinstance(node.right, ast.Constant) and node.right.value == isa.M
    ):
        node = node.left
    return ast.unparse(node)


def _access(size: int, addr: str, kind: str) -> str:
    """Source of the page-view subscript for a `size`-byte access at `addr`."""
    if addr.isidentifier():
        first, again = addr, addr  # a bare register: no temporary needed
    else:
        first, again = f"(_ma := {addr})", "_ma"
    return f"{kind}{size}[{first} & {_PAGE_KEY[size]}][{_OFFSET[size].format(m=again)}]"


def _is_attr(node: ast.AST, obj: str, attr: str | None = None) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == obj
        and (attr is None or node.attr == attr)
    )


@functools.cache
def _isa_lines() -> list[str]:
    """The source lines of isa.py (read once)."""
    return inspect.getsource(isa).splitlines(keepends=True)


def _isa_function(name: str) -> ast.FunctionDef:
    """The top-level function `name` of isa.py as an AST.

    Only its own lines are parsed (it ends where the next top-level statement
    starts): parsing the whole module, or `inspect.getsource` per function
    (which tokenizes the file each time), costs several times more, and a
    run parses only the templates of the instructions it translates.
    """
    lines = _isa_lines()
    first = getattr(isa, name).__code__.co_firstlineno - 1
    last = first + 1
    while last < len(lines) and (not lines[last].strip() or lines[last][0] in " \t#"):
        last += 1
    return ast.parse("".join(lines[first:last])).body[0]


class _Template:
    """The body of one `execute_<mnemonic>`, its local names, whether it reads pc."""

    def __init__(self, mnemonic: str):
        func = _isa_function("execute_" + mnemonic)
        self.body = func.body
        nodes = list(ast.walk(func))
        self.uses_pc = any(_is_attr(n, "s", "pc") for n in nodes)
        self.locals = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


class _NotSymbolic(Exception):
    """The template cannot be specialised by shape; do it per instruction."""


_REGISTER_FIELDS = ("rd", "rs1", "rs2")
_VALUE_FIELDS = ("imm", "simm", "shamt", "csr", "word")


class _Transformer(ast.NodeTransformer):
    """ast.NodeTransformer, faster: visitors looked up once per node class,
    contexts (Load, Store) not visited. Folding templates is the translator's
    largest cost after compile(), and most of it is this walk."""

    _visitors: dict = {}

    def visit(self, node):
        key = (type(self), type(node))
        visitor = _Transformer._visitors.get(key)
        if visitor is None:
            visitor = _Transformer._visitors[key] = getattr(
                type(self), "visit_" + type(node).__name__, type(self).generic_visit)
        return visitor(self, node)

    def generic_visit(self, node):
        for field in node._fields:
            old = getattr(node, field, None)
            if isinstance(old, list):
                new = []
                for value in old:
                    if isinstance(value, ast.AST):
                        value = self.visit(value)
                        if value is None:
                            continue
                        if not isinstance(value, ast.AST):
                            new.extend(value)
                            continue
                    new.append(value)
                old[:] = new
            elif isinstance(old, ast.AST) and field != "ctx":
                replaced = self.visit(old)
                if replaced is None:
                    delattr(node, field)
                else:
                    setattr(node, field, replaced)
        return node


class _Specialise(_Transformer):
    """Rewrite one instruction's template into block code (see module doc).

    With `symbolic`, non-zero register numbers and non-zero immediates become
    placeholders (`__rs1__`, `__imm__`) so that the folded result serves every
    instruction of the same shape; `_fill` puts the numbers in.
    """

    def __init__(self, insn: isa.Insn, pc: int, local_names: set[str], symbolic: bool = False, values: bool = True):
        self.insn, self.pc, self.local_names, self.symbolic = insn, pc, local_names, symbolic
        self.values = symbolic and values  # immediates as placeholders too
        self.read: set = set()
        self.written: set = set()
        self.may_stop = False

    def visit_Subscript(self, node):
        if _is_attr(node.value, "s", "x") and _is_attr(node.slice, "i"):
            field = node.slice.attr
            reg = getattr(self.insn, field)
            name = f"__{field}__" if self.symbolic else f"x{reg}"
            role = field if self.symbolic else reg
            if isinstance(node.ctx, ast.Store):
                if reg == 0:
                    return ast.Name("_", ast.Store())
                self.written.add(role)
                return ast.Name(name, ast.Store())
            if reg == 0:
                return ast.Constant(0)
            self.read.add(role)
            return ast.Name(name, ast.Load())
        return self.generic_visit(node)

    def visit_Attribute(self, node):
        if _is_attr(node, "i"):
            value = getattr(self.insn, node.attr)
            if self.values and node.attr in _VALUE_FIELDS and value != 0:
                return ast.Name(f"__{node.attr}__", ast.Load())
            if self.symbolic and node.attr in _REGISTER_FIELDS:
                raise _NotSymbolic  # a register number used as a value
            return ast.Constant(value)
        if _is_attr(node, "s", "pc"):
            return ast.Constant(self.pc)
        return self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in self.local_names:
            return ast.Name("t_" + node.id, node.ctx)
        if isinstance(_ISA_CONSTANTS.get(node.id), int):
            return ast.Constant(_ISA_CONSTANTS[node.id])  # M, trap causes: let them fold
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "signed":
            # Inline: a call costs more than the arithmetic.
            (arg,) = node.args
            biased = ast.BinOp(arg, ast.BitXor(), ast.Constant(_SIGN))
            return ast.BinOp(biased, ast.Sub(), ast.Constant(_SIGN))
        if _is_attr(node.func, "s", "load"):
            # A marker call; `_emit` turns it into the inline fast path as text,
            # which is much cheaper than building and folding its AST.
            addr, size = node.args
            return ast.Call(ast.Name(f"__load{size.value}__", ast.Load()), [addr], [])
        if _is_attr(node.func, "s", "trap"):
            return ast.Call(ast.Name("TRAP", ast.Load()), node.args, [])
        if _is_attr(node.func, "s"):
            raise NotImplementedError(f"{self.insn.mnemonic}: s.{node.func.attr} cannot be translated")
        return node

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and _is_attr(call.func, "s", "store"):
            addr, size, value = (self.visit(arg) for arg in call.args)
            return ast.Expr(ast.Call(ast.Name(f"__store{size.value}__", ast.Load()), [addr, value], []))
        return self.generic_visit(node)

    def visit_Return(self, node):
        self.generic_visit(node)
        return ast.Assign([ast.Name("npc", ast.Store())], node.value)

    def visit_Assign(self, node):
        self.generic_visit(node)
        target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "_":
            # A write to x0: keep only what can stop (a load must still fault).
            if any(isinstance(n, ast.Call) for n in ast.walk(node.value)):
                return ast.Expr(node.value)
            return None
        return node


_ISA_CONSTANTS = {name: value for name, value in vars(isa).items() if name.isupper() and isinstance(value, int)}


_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.LShift: operator.lshift,
    ast.RShift: operator.rshift, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARYOPS = {ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert}
_COMPARES = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}


def _constant_value(node: ast.expr):
    """The value of an operation on constants, or raise LookupError."""
    if isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant):
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and node.right.value == 0:
            raise LookupError  # leave it to run time (it never runs: guarded)
        return _BINOPS[type(node.op)](node.left.value, node.right.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return _UNARYOPS[type(node.op)](node.operand.value)
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.left, ast.Constant)
        and isinstance(node.comparators[0], ast.Constant)
    ):
        return _COMPARES[type(node.ops[0])](node.left.value, node.comparators[0].value)
    raise LookupError


class _Fold(_Transformer):
    """Constant folding and single-assignment constant propagation."""

    def __init__(self, constants: dict[str, int]):
        self.constants = constants

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.constants:
            return ast.Constant(self.constants[node.id])
        return node

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare)):
            try:
                return ast.Constant(_constant_value(node))
            except LookupError:
                return _simplify(node)
        if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        if isinstance(node, ast.If) and isinstance(node.test, ast.Constant):
            return (node.body if node.test.value else node.orelse) or None
        return node


def _is_register(node: ast.expr) -> bool:
    if not isinstance(node, ast.Name):
        return False
    return node.id[0] == "x" and node.id[1:].isdigit() or node.id in ("__rd__", "__rs1__", "__rs2__")


_SIGN = 0x80000000


class _ExpandLoads(_Transformer):
    """Replace load markers by placeholders; `loads` gets their fast-path source."""

    def __init__(self):
        self.loads: list[str] = []

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id.startswith("__load"):
            self.loads.append(_access(int(node.func.id[6]), _address(node.args[0]), "R"))
            return ast.Name(f"__mem{len(self.loads) - 1}__", ast.Load())
        return node


def _emit(statement: ast.stmt) -> str:
    """Source of a folded statement, with memory-access markers expanded."""
    value = statement.value if isinstance(statement, ast.Expr) else None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id.startswith("__store"):
        addr, stored = value.args
        return f"{_access(int(value.func.id[7]), _address(addr), 'W')} = {ast.unparse(stored)}"
    expand = _ExpandLoads()
    text = ast.unparse(expand.visit(statement))
    for index, load in enumerate(expand.loads):
        text = text.replace(f"__mem{index}__", load)
    return text


def _unsigned_image(node: ast.expr) -> ast.expr | None:
    """For `(e ^ 2**31) - 2**31` (signed(e), inlined) return `e ^ 2**31`."""
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Sub)
        and isinstance(node.right, ast.Constant)
        and node.right.value == _SIGN
        and isinstance(node.left, ast.BinOp)
        and isinstance(node.left.op, ast.BitXor)
        and isinstance(node.left.right, ast.Constant)
        and node.left.right.value == _SIGN
    ):
        return node.left
    return None


def _simplify(node: ast.expr) -> ast.expr:
    """Identities that hold because registers are always in [0, 2**32)."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        # signed(a) < signed(b)  <=>  a ^ 2**31 < b ^ 2**31: both sides shift
        # by the same 2**31, so one subtraction each can go.
        left, right = node.left, node.comparators[0]
        left_image, right_image = _unsigned_image(left), _unsigned_image(right)
        if left_image is not None and right_image is not None:
            return ast.Compare(left_image, node.ops, [right_image])
        op = type(node.ops[0])
        if left_image is not None and isinstance(right, ast.Constant):
            if right.value == 0 and op in (ast.Lt, ast.GtE):
                # signed(a) < 0 is a >= 2**31: no bias at all (bltz, bgez)
                flipped = ast.GtE() if op is ast.Lt else ast.Lt()
                return ast.Compare(left_image.left, [flipped], [ast.Constant(_SIGN)])
            return ast.Compare(left_image, node.ops, [ast.Constant(right.value + _SIGN)])
        if right_image is not None and isinstance(left, ast.Constant) and left.value == 0 and op in (ast.Gt, ast.LtE):
            # 0 > signed(a) is a >= 2**31 (bltz written blt x0 ...)
            flipped = ast.GtE() if op is ast.Gt else ast.Lt()
            return ast.Compare(right_image.left, [flipped], [ast.Constant(_SIGN)])
        if right_image is not None and isinstance(left, ast.Constant):
            return ast.Compare(ast.Constant(left.value + _SIGN), node.ops, [right_image])
    if isinstance(node, ast.BinOp) and isinstance(node.right, ast.Constant):
        op, value = type(node.op), node.right.value
        if value == 0 and op in (ast.Add, ast.Sub, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift):
            return node.left  # mv, shifts by 0
        if op is ast.BitAnd and value == isa.M and _is_register(node.left):
            return node.left
    return node


def _fold(statements: list[ast.stmt]) -> list[ast.stmt]:
    """Fold constants, propagate single-assignment constant temporaries, repeat."""
    module = _Fold({}).visit(ast.Module(statements, []))
    for _ in range(3):
        stores: dict[str, list[ast.Assign]] = {}
        for node in ast.walk(module):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                stores.setdefault(node.id, [])
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                stores.setdefault(node.targets[0].id, []).append(node)
        constants = {
            name: assigns[0].value.value
            for name, assigns in stores.items()
            if name.startswith("t_") and len(assigns) == 1 and isinstance(assigns[0].value, ast.Constant)
        }
        if not constants:
            break
        dead = {id(stores[name][0]) for name in constants}
        module = _DropAssigns(dead).visit(_Fold(constants).visit(module))
    return ast.fix_missing_locations(module).body


class _DropAssigns(_Transformer):
    def __init__(self, dead: set[int]):
        self.dead = dead

    def visit_Assign(self, node):
        return None if id(node) in self.dead else node

    def generic_visit(self, node):
        node = super().generic_visit(node)
        # A branch emptied by dropping its only statement still needs a body.
        if isinstance(node, ast.If) and not node.body:
            node.body = [ast.Pass()]
        return node


class Translator:
    """Builds and compiles blocks for one core, in that core's namespace."""

    def __init__(self, core):
        self.core = core
        self.decode_cache: dict[int, isa.Insn | None] = {}
        self._templates: dict[str, _Template] = {}
        self._specialised: dict[tuple[int, int | None], tuple] = {}
        self._shapes: dict[tuple, tuple] = {}
        # pc -> a region that can continue to pc but does not hold it (see
        # `Core._translate_at`).
        self.exit_owner: dict[int, object] = {}
        # Translated code sees the isa module's names (M, trap causes) plus
        # the core's page maps and slow paths, all fixed for the core's life.
        self.namespace = dict(vars(isa))
        self.namespace.update(
            Fault=Fault,
            TRAP=core.trap,
            INTERP=type(core).interpret,
            R1=core.R1, R2=core.R2, R4=core.R4,
            W1=core.W1, W2=core.W2, W4=core.W4,
        )

    def decode(self, word: int) -> isa.Insn | None:
        """Decode with a cache keyed by the instruction word."""
        try:
            return self.decode_cache[word]
        except KeyError:
            insn = self.decode_cache[word] = isa.decode(word)
            return insn

    def translate(self, pc: int):
        """Return a region function for the code at `pc`.

        Raises:
            Fault: the fetch of the first instruction stopped (core.stop set).
        """
        self.core.fetch(pc)  # checks the TLB and the page of the entry once
        entry = self._scan(pc)
        if entry is None:
            return _interpret_one
        # Grow a region from the entry along static successors that have
        # already run (the heat map), so that a loop with branches inside
        # stays in one Python function with its registers in locals.
        region = {pc: entry}
        order = [pc]
        queue = list(_successors(pc, entry))
        heat = self.core._heat
        while queue and len(region) < MAX_REGION_BLOCKS:
            start = queue.pop(0)
            # Blocks that ran only once or twice are likely start-up or error
            # paths: compiling them costs more than leaving the region. A
            # block that ran a few times is in, though: left out, it would
            # make the region be compiled again when it gets hot.
            cold = heat.get(start, 0) < min(REGION_HEAT, (self.core.hot_threshold + 1) // 2)
            # A block another region already holds is compiled here again:
            # leaving a region and entering another through the run loop
            # costs more, every time, than compiling it once more.
            if start in region or cold or (start >> 12) not in self.core.X1:
                continue
            insns = self._scan(start)
            if insns is None:
                continue
            region[start] = insns
            order.append(start)
            queue.extend(_successors(start, insns))
        return self._compile(pc, [(start, region[start]) for start in order])

    def _scan(self, pc: int) -> list[isa.Insn] | None:
        """Decode the basic block at `pc` (on a page already checked executable)."""
        page = self.core.X1.get(pc >> 12) or self.core._resolve(pc, "x")
        insns: list[isa.Insn] = []
        addr = pc
        while True:
            off = addr & 4095
            insn = self.decode(int.from_bytes(page[off : off + 4], "little"))
            if insn is None or insn.mnemonic in isa.SERIALIZING:
                break
            insns.append(insn)
            addr = (addr + 4) & isa.M
            if insn.mnemonic in isa.CONTROL or addr & 4095 == 0 or len(insns) >= MAX_BLOCK:
                break
        return insns or None

    def _template(self, mnemonic: str) -> _Template:
        template = self._templates.get(mnemonic)
        if template is None:
            template = self._templates[mnemonic] = _Template(mnemonic)
        return template

    def _specialise(self, insn: isa.Insn, pc: int):
        """One instruction's source lines and what it touches.

        Cached by word (and pc, for templates that read it): hot code is
        re-translated whenever a block starts in a new place. Most templates
        are folded once per shape (which registers and immediates are zero)
        and filled in by text substitution; control transfers are folded
        once per shape at a canonical pc and given their real targets.
        """
        template = self._template(insn.mnemonic)
        key = (insn.word, pc if template.uses_pc else None)
        cached = self._specialised.get(key)
        if cached is not None:
            return cached
        if insn.mnemonic in _PC_RELATIVE_CONTROL:
            # Folded once per shape at a canonical pc, then given the real
            # target and link by text substitution. A branch or jal is folded
            # with a canonical offset of the same alignment (which decides
            # the alignment check); jalr's offset is a placeholder.
            jalr = insn.mnemonic == "jalr"
            shape_key = (insn.mnemonic, insn.rd == 0, insn.rs1 == 0, insn.rs2 == 0,
                         insn.simm == 0 if jalr else insn.simm & 3)
            shape = self._shapes.get(shape_key)
            if shape is None:
                offset = insn.simm if jalr else _CANONICAL_OFFSET + (insn.simm & 3)
                canonical = isa.Insn(insn.mnemonic, insn.word, insn.rd, insn.rs1, insn.rs2, offset)
                shape = self._shapes[shape_key] = self._fold_template(
                    template, canonical, _CANONICAL_PC, symbolic=True, values=jalr)
            texts, spec = shape
            numbers = {
                str(_CANONICAL_PC + _CANONICAL_OFFSET + (insn.simm & 3)): str((pc + insn.simm) & isa.M),
                str(_CANONICAL_PC + 4): str((pc + 4) & isa.M),
            }
            texts = [_fill(_NUMBER.sub(lambda m: numbers.get(m.group(), m.group()), text), insn) for text in texts]
            cached = (texts, _Touched({getattr(insn, f) for f in spec.read}, {getattr(insn, f) for f in spec.written},
                                      spec.may_stop, spec.sets_npc))
        elif not template.uses_pc:
            shape_key = (insn.mnemonic, insn.rd == 0, insn.rs1 == 0, insn.rs2 == 0, insn.simm == 0, insn.shamt == 0)
            shape = self._shapes.get(shape_key)
            if shape is None:
                try:
                    shape = self._shapes[shape_key] = self._fold_template(template, insn, pc, symbolic=True)
                except _NotSymbolic:
                    shape = self._shapes[shape_key] = None
            if shape is not None:
                texts, spec = shape
                read = {getattr(insn, f) for f in spec.read}
                written = {getattr(insn, f) for f in spec.written}
                cached = ([_fill(text, insn) for text in texts], _Touched(read, written, spec.may_stop, spec.sets_npc))
        if cached is None:
            cached = self._fold_template(template, insn, pc, symbolic=False)
        self._specialised[key] = cached
        return cached

    def _fold_template(self, template: _Template, insn: isa.Insn, pc: int, symbolic: bool, values: bool = True):
        spec = _Specialise(insn, pc, template.locals, symbolic, values)
        statements = []
        for statement in _clone(template.body):
            result = spec.visit(statement)
            if result is not None:
                statements.extend(result if isinstance(result, list) else [result])
        statements = [s for s in _fold(statements) if not isinstance(s, ast.Pass)]
        texts = [_emit(s) for s in statements]
        # Decided after folding: an alignment check on a constant target is gone.
        may_stop = any(_MAY_STOP.search(text) for text in texts)
        sets_npc = any(_assigns_npc(s) for s in statements)  # unconditionally, at top level
        return texts, _Touched(spec.read, spec.written, may_stop, sets_npc)

    def _block(self, start: int, insns: list[isa.Insn]) -> "_Block":
        """The code of one basic block: its lines, where it goes, what it touches."""
        length = len(insns)
        fallthrough = (start + 4 * length) & isa.M
        body: list[str] = []
        read: set[int] = set()
        written: set[int] = set()
        exit_ = None
        for index, insn in enumerate(insns):
            texts, spec = self._specialise(insn, (start + 4 * index) & isa.M)
            read |= spec.read
            written |= spec.written
            if spec.may_stop:
                # Tag its lines: a stop's traceback line number says which
                # instruction stopped, so the hot path stores no index.
                texts = [f"{line}  # k={index}" for text in texts for line in text.split("\n")]
            if index == length - 1 and insn.mnemonic in isa.CONTROL:
                lines, exit_ = _exit(texts, spec, fallthrough)
                body.extend(lines)
            else:
                for text in texts:
                    _append_narrowed(body, text)
        if insns[-1].mnemonic not in isa.CONTROL:
            exit_ = ("jump", fallthrough)
        return _Block(start, _merged([_stack_keys(_wrapped(line)) for line in body]), exit_, length, read, written)

    def _compile(self, entry: int, blocks: list[tuple[int, list[isa.Insn]]]):
        codes = {start: self._block(start, insns) for start, insns in blocks}
        read: set[int] = set()
        written: set[int] = set()
        for code in codes.values():
            read |= code.read
            written |= code.written
        build = _RegionBuilder(codes, entry)
        bodies = build.entries()
        dispatch = _dispatch(sorted(bodies), bodies)
        load = [f"x{r} = X[{r}]" for r in sorted(read | written)]
        store = [f"X[{r}] = x{r}" for r in sorted(written)]
        name = f"region_{entry:08x}"
        lines = [f"def {name}(s, budget):"]
        # Below `lim` every block of every path fits in the budget, so the
        # exact test of a block runs only near the end of the budget.
        # The page maps the region uses, as locals (a global costs more).
        text = "\n".join(dispatch)
        maps = [f"{m} = s.{m}" for m in ("R1", "R2", "R4", "W1", "W2", "W4") if f"{m}[" in text]
        limits = [f"{name} = budget - {longest}" for name, longest in build.loop_limits.items()]
        entry_lines = ["X = s.x", *load, *maps, "pc = s.pc", "n = 0", "stop = 0", f"lim = budget - {build.longest}"]
        entry_lines += limits
        lines += _indent(1, [*entry_lines, "try:", "    while True:"])
        lines += _indent(3, dispatch)
        # One write-back of the registers for every way out (it is a large
        # share of a small region's source, and of its compile time).
        lines += _indent(1, [
            "except Fault as stopped:",
            "    pc, k = K[stopped.__traceback__.tb_lineno]",
            "    n += k",
            "    stop = 1",
            "except KeyError as missed:",
            "    # Not on the fast path (TLB miss, page absent or read-only,",
            "    # misaligned): the interpreter's slow path runs it exactly.",
            "    pc, k = K[missed.__traceback__.tb_lineno]",
            "    n += k",
            "    stop = 2",
            *store,
            "s.pc = pc",
            "if stop:",
            "    return n if stop == 1 else n + INTERP(s, 1)",
            "if n:",
            "    return n",
            "return INTERP(s, budget)  # the budget is smaller than the first block",
        ])
        source = "\n".join(lines) + "\n"
        stops = {
            number: (int(tag.group(1)), int(tag.group(2)))
            for number, line in enumerate(lines, 1)
            if (tag := _STOP_AT.search(line))
        }
        namespace = dict(self.namespace, K=stops)
        # The source is generated from isa.py only, never from guest data.
        exec(compile(source, f"<region {entry:#010x}>", "exec"), namespace)
        region = namespace.pop(name)
        region.source = source  # for debugging and tests
        region.entry = entry
        region.starts = [start for start, _ in blocks]
        for start, insns in blocks:
            for successor in _successors(start, insns):
                if successor not in region.starts:
                    self.exit_owner[successor] = region
        region.vpns = frozenset(
            (start + 4 * i) >> 12 for start, insns in blocks for i in (0, len(insns) - 1)
        )
        return region


_MASK_AGAIN = re.compile(r"(x\d+) = \1 & (\d+)")
_SHIFT_MASKED = re.compile(r"(x\d+) = \1 << (\d+) & 4294967295")
_MASKED = re.compile(r"(x\d+) = (.+) & (\d+)")
_ASSIGN = re.compile(r"(x\d+) = ([^=].*)")


def _append_narrowed(body: list[str], text: str) -> None:
    """Append one line of a block, merging it with the line before when that is the same register's.

    Two shapes that compilers emit all the time for byte and array indexes
    (`add` then `zext.b`/`andi`, `andi` then `slli`) cost a mask each that
    the first already decides: `x = e & M; x = x & c` is `x = e & c`, and
    after `x = e & c` with c small, `x << s` needs no mask. Only lines that
    cannot stop are merged (the intermediate value is never seen).
    """
    before = body[-1] if body else ""
    if "\n" not in text and "\n" not in before and "#" not in before and "#" not in text:
        again = _MASK_AGAIN.fullmatch(text)
        if again and (mask := int(again.group(2))) < isa.M:
            first = _masked(before, again.group(1))
            if first is not None and first[1] == isa.M:
                body[-1] = f"{again.group(1)} = {_and(first[0], mask)}"
                return
        shift = _SHIFT_MASKED.fullmatch(text)
        if shift:
            first = _masked(before, shift.group(1))
            if first is not None and first[1] << int(shift.group(2)) <= isa.M:
                body.append(f"{shift.group(1)} = {shift.group(1)} << {shift.group(2)}")
                return
    body.append(text)


_WRAP_UP = re.compile(r"(x\d+) = (x\d+ \+ (?:x\d+|\d+)|x\d+ << 1) & 4294967295")
_WRAP_DOWN = re.compile(r"(x\d+) = (x\d+ (?:\+ \(-\d+\)|- x\d+)) & 4294967295")


def _wrapped(line: str) -> str:
    """`x = a + b & M` as `x = a + b` and a test: `& 2**32 - 1` is a slow operation.

    For values in [0, 2**32) (every register), a sum, `x << 1` and a
    difference leave that range by less than 2**32 on one known side, so one
    comparison (which allocates nothing) and a rare correction do the wrap.
    """
    for pattern, test, fix in ((_WRAP_UP, "> 4294967295", "-="), (_WRAP_DOWN, "< 0", "+=")):
        match = pattern.fullmatch(line)
        if match and int(match.group(2).rpartition(" ")[2].strip("x(-)")) <= isa.M:
            register = match.group(1)
            return f"{register} = {match.group(2)}\nif {register} {test}: {register} {fix} 4294967296"
    return line


def _merged(body: list[str]) -> list[str]:
    """The lines of `body`, with `x = e1` then `x = e2(x)` (x used once in e2) as `x = e2((e1))`.

    That saves a store and a load of an intermediate value that nothing
    sees: only lines that cannot stop are merged, at the top level of the
    block (a wrap's test after the second line still tests its value).
    """
    lines: list[str] = []
    for text in body:
        for line in text.split("\n"):
            second = _ASSIGN.fullmatch(line)
            first = _ASSIGN.fullmatch(lines[-1]) if second and lines else None
            if first and first.group(1) == second.group(1) and "#" not in line and "#" not in lines[-1]:
                use = re.compile(rf"\b{first.group(1)}\b")
                if len(use.findall(second.group(2))) == 1:
                    lines[-1] = f"{first.group(1)} = {use.sub(f'({first.group(2)})', second.group(2))}"
                    continue
            lines.append(line)
    return lines


def _stack_keys(line: str) -> str:
    """The page keys of accesses based on sp with positive masks (see `_PAGE_KEY`)."""
    if "x2" not in line:
        return line
    return _STACK_KEY.sub(lambda m: f"[{m.group(1)} & {int(m.group(2)) & isa.M}]", line)


def _masked(line: str, register: str) -> tuple[ast.expr, int] | None:
    """(e, c) if `line` is `register = e & c` with `&` its outermost operation."""
    match = _MASKED.fullmatch(line)
    if match is None or match.group(1) != register:
        return None
    value = ast.parse(line).body[0].value
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitAnd) and isinstance(value.right, ast.Constant):
        return value.left, value.right.value
    return None


def _and(expr: ast.expr, mask: int) -> str:
    return ast.unparse(ast.BinOp(expr, ast.BitAnd(), ast.Constant(mask)))


DISPATCH_LINEAR = 3  # up to this many block starts are tested one by one


def _dispatch(starts: list[int], bodies: dict[int, list[str]]) -> list[str]:
    """Code that runs the block starting at `pc`: a binary search on `pc`.

    A region of n blocks finds one in about log2(n) comparisons instead of
    n/2; a pc no block starts at leaves the loop (`break`).
    """
    if len(starts) <= DISPATCH_LINEAR:
        lines: list[str] = []
        for number, start in enumerate(starts):
            lines.append(f"{'if' if number == 0 else 'elif'} pc == {start}:")
            lines.extend(_indent(1, bodies[start]))
        return [*lines, "else:", "    break"]
    middle = len(starts) // 2
    return [
        f"if pc < {starts[middle]}:",
        *_indent(1, _dispatch(starts[:middle], bodies)),
        "else:",
        *_indent(1, _dispatch(starts[middle:], bodies)),
    ]


_BRANCH = re.compile(r"if (.+):\n    npc = (\d+)")
_JUMP = re.compile(r"npc = (\d+)")


def _exit(texts: list[str], spec: _Touched, fallthrough: int) -> tuple[list[str], tuple | None]:
    """A block's final control transfer: its lines, and where it goes if that is static.

    Returns:
        (lines, None) if the lines set `pc` themselves (a computed target, or
        an exit that may stop); else (lines before the transfer, ("jump",
        target)) or ([], ("branch", condition, taken, fallthrough)), which
        `_RegionBuilder` turns into code that sets `pc`.
    """
    if not spec.may_stop:
        # The usual shapes after folding: a conditional branch, and a jump
        # to a constant target.
        if not spec.sets_npc and len(texts) == 1 and (match := _BRANCH.fullmatch(texts[0])):
            return [], ("branch", _truth(match.group(1)), int(match.group(2)), fallthrough)
        if spec.sets_npc and (match := _JUMP.fullmatch(texts[-1])):
            return texts[:-1], ("jump", int(match.group(1)))
    head = [] if spec.sets_npc else [f"npc = {fallthrough}"]  # a branch not taken
    return [*head, *texts, "pc = npc"], None


_ZERO_TEST = re.compile(r"(x\d+) ([!=])= 0|0 ([!=])= (x\d+)")


def _truth(condition: str) -> str:
    """`x != 0` as `x`, `x == 0` as `not x` (beqz, bnez): a truth test costs less than a comparison."""
    match = _ZERO_TEST.fullmatch(condition)
    if match is None:
        return condition
    register, op = (match.group(1), match.group(2)) if match.group(1) else (match.group(4), match.group(3))
    return register if op == "!" else f"not {register}"


class _Block:
    """One basic block: body lines (those of an instruction that may stop tagged
    `# k=<index>`), static exit (see `_exit`), length, registers read and written."""

    def __init__(self, start: int, body: list[str], exit_: tuple | None, length: int, read: set, written: set):
        self.start, self.exit, self.length, self.read, self.written = start, exit_, length, read, written
        self.lines: list[tuple[str, int | None]] = []
        for text in body:
            for line in text.split("\n"):
                tag = _STOP_TAG.search(line)
                self.lines.append((line[: tag.start()], int(tag.group(1))) if tag else (line, None))
        if exit_ is None:
            self.targets: tuple[int, ...] = ()
        elif exit_[0] == "jump":
            self.targets = (exit_[1],)
        else:
            self.targets = (exit_[2], exit_[3])


class _RegionBuilder:
    """The code of a region's blocks as trees, and loops as Python `while` loops.

    Every block start gets an entry in the region's dispatch. The code that
    follows a block is a tree: a static exit to a block of the region carries
    a copy of that block (and so on), so a path through the region needs no
    trip through the dispatch. A loop header (the target of a back edge of a
    depth-first walk from the entry) runs as `while True:` around its tree,
    in which the back edges are `continue`: an iteration of a loop, whatever
    branches it takes inside, costs no dispatch at all.

    Along a tree, `pc` and `n` (instructions retired) are not updated: each
    leaf adds the length of its path to `n` and sets `pc` once. An instruction
    that may stop is tagged `# @<pc>,<retired before it on the path>`, which
    the region's handlers read back by line number. Outside loops, each block
    checks that it fits in the budget with the length of the path up to its
    end; a loop tests once per iteration that its longest path fits, and
    finishes a budget block by block (see `_entry`).
    """

    def __init__(self, blocks: dict[int, _Block], entry: int):
        self.blocks = blocks
        self.entry_pc = entry
        self.longest = 1  # the longest path up to the end of a block, of any tree that tests the budget
        self.loop_limits: dict[str, int] = {}  # for each loop, its limit's name -> its longest path
        self._path_max = 0
        self.leaves_to: set[int] = set()  # the blocks the tree being built leaves to
        self.headers = self._loop_headers(entry)

    def _loop_headers(self, entry: int) -> set[int]:
        headers: set[int] = set()
        on_path: set[int] = set()
        seen: set[int] = set()
        # Iterative depth-first walk: a successor on the current path is the
        # target of a back edge.
        stack = [(entry, iter(self.blocks[entry].targets))]
        on_path.add(entry)
        seen.add(entry)
        while stack:
            node, successors = stack[-1]
            for successor in successors:
                if successor not in self.blocks:
                    continue
                if successor in on_path:
                    headers.add(successor)
                elif successor not in seen:
                    seen.add(successor)
                    on_path.add(successor)
                    stack.append((successor, iter(self.blocks[successor].targets)))
                    break
            else:
                stack.pop()
                on_path.discard(node)
        return headers

    def entries(self) -> dict[int, list[str]]:
        """The code that runs when the dispatch finds each block start.

        The entry and the loop headers get their trees, and so does each
        block a tree leaves to (a path that goes through the dispatch). The
        other blocks are entered only to finish a budget or after a stop:
        their entries hold just themselves, which keeps the source (and its
        compile time) small.
        """
        bodies: dict[int, list[str]] = {}
        pending = [self.entry_pc, *sorted(self.headers)]
        while pending:
            start = pending.pop()
            if start in bodies:
                continue
            self.leaves_to = set()
            bodies[start] = self._entry(start)
            pending += sorted(self.leaves_to - bodies.keys())
        self.leaves_to = set()
        for start in self.blocks:
            if start not in bodies:
                self._room = 0
                bodies[start] = self._tree(start, 0, (start,), None, 0, True)
        return bodies

    def _entry(self, start: int) -> list[str]:
        if start in self.headers:
            # A loop iterates while its longest path fits in the budget, with
            # no test inside; near the end of the budget (`while ... else`)
            # its header runs alone, testing that it fits, and so do the
            # blocks after it (their entries), to use the budget exactly.
            self._room = LOOP_TREE_MAX
            self._path_max = 0
            tree = self._tree(start, 0, (start,), start, 0, False)
            limit = f"lim_{start:x}"
            self.loop_limits[limit] = self._path_max
            self._room = 0
            alone = self._tree(start, 0, (start,), None, 0, True)
            return [f"while n <= {limit}:", *_indent(1, tree), "else:", *_indent(1, alone)]
        self._room = INLINE_MAX * (1 << INLINE_DEPTH)
        return self._tree(start, 0, (start,), None, INLINE_DEPTH, True)

    def _tree(self, start: int, done: int, path: tuple, loop: int | None, depth: int, checked: bool) -> list[str]:
        block = self.blocks[start]
        end = done + block.length
        if checked:
            self.longest = max(self.longest, end)
            # Out of budget: leave the region.
            # (One line: less for compile() to parse.)
            out = [f"if n > lim and n + {end} > budget: {f'n += {done}; ' if done else ''}pc = {start}; break"]
        else:
            self._path_max = max(self._path_max, end)
            out = []
        for line, k in block.lines:
            out.append(line if k is None else f"{line}  # @{(start + 4 * k) & isa.M},{done + k}")
        exit_ = block.exit
        if exit_ is None:  # the lines set pc
            return [*out, f"n += {end}", *(["break"] if loop is not None else [])]
        if exit_[0] == "jump":
            return [*out, *self._go(exit_[1], end, path, loop, depth, checked)]
        _, condition, taken, fallthrough = exit_
        if taken not in self.blocks and fallthrough not in self.blocks:
            return [*out, f"n += {end}", f"pc = {taken} if {condition} else {fallthrough}",
                    *(["break"] if loop is not None else [])]
        return [
            *out,
            f"if {condition}:", *_indent(1, self._go(taken, end, path, loop, depth, checked)),
            "else:", *_indent(1, self._go(fallthrough, end, path, loop, depth, checked)),
        ]

    def _go(self, target: int, done: int, path: tuple, loop: int | None, depth: int, checked: bool) -> list[str]:
        """Continue at `target` after `done` instructions on the path."""
        if target == loop:
            return [f"n += {done}", "continue"]
        block = self.blocks.get(target)
        if block is not None and target not in path and target not in self.headers and block.length <= self._room:
            if loop is not None or (depth > 0 and block.length <= INLINE_MAX):
                self._room -= block.length
                return self._tree(target, done, (*path, target), loop, depth - 1, checked)
        return self._leave(done, target, loop)

    def _leave(self, done: int, target: int, loop: int | None) -> list[str]:
        """Back to the dispatch (out of the loop, if in one) to run `target`."""
        if target in self.blocks:
            self.leaves_to.add(target)
        return [*([f"n += {done}"] if done else []), f"pc = {target}", *(["break"] if loop is not None else [])]


def _interpret_one(core, budget):
    """The block for a serializing or undecodable instruction."""
    return core.interpret(1)


class _Touched:
    """Registers an instruction reads and writes, whether it may stop, whether it always jumps."""

    def __init__(self, read: set, written: set, may_stop: bool, sets_npc: bool):
        self.read, self.written, self.may_stop, self.sets_npc = read, written, may_stop, sets_npc


# Control transfer templates depend on pc only through pc + constants (target,
# link): folded at a canonical pc far from any such constant, their source gets
# the real numbers by substitution (see `Translator._specialise`).
_PC_RELATIVE_CONTROL = frozenset({"jal", "jalr", "beq", "bne", "blt", "bge", "bltu", "bgeu"})
_CANONICAL_PC = 0x40000000
_CANONICAL_OFFSET = 0x120  # an aligned branch offset; the canonical target is _CANONICAL_PC plus this
_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.])")


def _fill(text: str, insn: isa.Insn) -> str:
    """Put an instruction's registers and immediates into a shape's source."""
    for field in _REGISTER_FIELDS:
        text = text.replace(f"__{field}__", f"x{getattr(insn, field)}")
    for field in _VALUE_FIELDS:
        value = getattr(insn, field)
        text = text.replace(f"__{field}__", f"({value})" if value < 0 else str(value))
    return text


def _clone(node):
    """Copy an AST, 5-10x faster than copy.deepcopy (no memo, no pickling protocol)."""
    if isinstance(node, list):
        return [_clone(item) for item in node]
    if isinstance(node, ast.AST) and not isinstance(node, ast.expr_context):
        copy = node.__class__()
        for field in node._fields:
            setattr(copy, field, _clone(getattr(node, field, None)))
        return copy
    return node


def _successors(start: int, insns: list[isa.Insn]) -> list[int]:
    """Statically known (or, after a call, likely) next block starts; none for jalr."""
    last = insns[-1]
    pc = (start + 4 * (len(insns) - 1)) & isa.M
    fallthrough = (pc + 4) & isa.M
    if last.mnemonic == "jal":
        # A call (rd = ra) usually comes back right after itself: with callee
        # and return point in one region, `ret` does not leave the region.
        return [(pc + last.simm) & isa.M] + ([fallthrough] if last.rd else [])
    if last.mnemonic == "jalr":
        return []
    if last.mnemonic in isa.CONTROL:
        return [(pc + last.simm) & isa.M, fallthrough]
    return [fallthrough]


def _assigns_npc(node: ast.stmt, value: int | None = None) -> bool:
    """Whether `node` is `npc = <value>` (any value if None)."""
    return (
        isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "npc"
        and (value is None or isinstance(node.value, ast.Constant) and node.value.value == value)
    )


def _indent(level: int, lines: list[str]) -> list[str]:
    """`lines` (each a single line) indented by `level` levels."""
    pad = "    " * level
    return [pad + line for line in lines]
