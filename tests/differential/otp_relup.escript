#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noshell
%%
%% The reference side of the differential test: Erlang/OTP's own relup
%% computation on each generated case, in one VM for speed.
%%
%% Usage: otp_relup.escript CASE_LIST_FILE
%% Each case directory holds otp/meta.term ({Mode, TopRel, BaseRel}) and
%% otp/lib/<app>-<vsn>/ebin/{<app>.app,<app>.appup}, otp/<rel>.rel.
%% Writes <case>/otp.txt: "ok", then "--up" and "--down" sections with one
%% instruction per line, or "error" and the reason.
%%
%% Mode full: systools:make_relup end to end (reading .rel/.app/.appup,
%% ordering applications, searching appups), for cases where both releases
%% hold the same applications, so that OTP's order and reld's agree.
%% Mode ordered: OTP's translation (systools_rc:translate_scripts) of the
%% appup scripts taken in reld's order (SPEC.md's one difference: removed
%% applications stop first, added ones start in dependency order).
-mode(compile).
-include_lib("sasl/src/systools.hrl").

main([ListFile]) ->
    {ok, Bin} = file:read_file(ListFile),
    Dirs = string:lexemes(binary_to_list(Bin), "\n"),
    lists:foreach(fun run_case/1, Dirs).

run_case(Dir) ->
    {ok, [{Mode, Top, Base}]} = file:consult(filename:join([Dir, "otp", "meta.term"])),
    Ebins = systools_lib:get_path([filename:join([Dir, "otp", "lib", "*", "ebin"])]),
    Path = Ebins ++ code:get_path(),
    TopFile = filename:join([Dir, "otp", Top]),
    BaseFile = filename:join([Dir, "otp", Base]),
    Result = try compute(Mode, TopFile, BaseFile, Path)
             catch throw:E -> {error, E};
                   error:E -> {error, {crash, E}}
             end,
    Text = case Result of
               {ok, Up, Dn} ->
                   ["ok\n--up\n", [[fmt(I), "\n"] || I <- Up],
                    "--down\n", [[fmt(I), "\n"] || I <- Dn]];
               {error, Reason} ->
                   io_lib:format("error\n~tp\n", [Reason])
           end,
    ok = file:write_file(filename:join(Dir, "otp.txt"), Text).

compute(full, TopFile, BaseFile, Path) ->
    case systools:make_relup(TopFile, [BaseFile], [BaseFile],
                             [{path, Path}, silent, noexec]) of
        {ok, {_Vsn, [{_, _, Up}], [{_, _, Dn}]}, _Mod, _Ws} -> {ok, Up, Dn};
        Error -> {error, Error}
    end;
compute(ordered, TopFile, BaseFile, Path) ->
    {ok, _, TopNVA, _} = systools_make:get_release(TopFile, Path),
    {ok, _, BaseNVA, _} = systools_make:get_release(BaseFile, Path),
    TopApps = [A || {_, A} <- TopNVA],
    BaseApps = [A || {_, A} <- BaseNVA],
    Up = translate(up, scripts(up, BaseApps, TopApps), TopApps, BaseApps),
    Dn = translate(dn, scripts(dn, TopApps, BaseApps), BaseApps, TopApps),
    {ok, Up, Dn}.

translate(Mode, Scripts, Appls, PreAppls) ->
    case systools_rc:translate_scripts(Mode, Scripts, Appls, PreAppls) of
        {ok, S} -> S;
        Error -> throw(Error)
    end.

%% From -> To, reld's order. The newer version's appup holds both directions.
scripts(Mode, FromApps, ToApps) ->
    Name = fun(A) -> A#application.name end,
    Removed = lists:reverse([[{remove_application, Name(A)}] || A <- FromApps,
                             not lists:keymember(Name(A), #application.name, ToApps)]),
    Rest = lists:flatmap(
             fun(A) ->
                     case lists:keyfind(Name(A), #application.name, FromApps) of
                         false -> [[{add_application, Name(A)}]];
                         F when F#application.vsn == A#application.vsn -> [];
                         F ->
                             {Holder, Other} = case Mode of
                                                   up -> {A, F#application.vsn};
                                                   dn -> {F, A#application.vsn}
                                               end,
                             File = filename:join(Holder#application.dir,
                                                  atom_to_list(Name(Holder)) ++ ".appup"),
                             {ok, [{_, UpL, DnL}]} = file:consult(File),
                             L = case Mode of up -> UpL; dn -> DnL end,
                             case systools_relup:appup_search_for_version(Other, L) of
                                 {ok, RU} -> [RU];
                                 error -> throw({no_relup, Name(A), Other})
                             end
                     end
             end, ToApps),
    Removed ++ Rest.

fmt({load_object_code, {L, V, Ms}}) -> io_lib:format("load_object_code ~s ~s ~s", [L, V, mods(Ms)]);
fmt(point_of_no_return) -> "point_of_no_return";
fmt({load, {M, Pre, Post}}) -> io_lib:format("load ~s ~s ~s", [M, Pre, Post]);
fmt({remove, {M, Pre, Post}}) -> io_lib:format("remove ~s ~s ~s", [M, Pre, Post]);
fmt({code_change, Mode, MEs}) ->
    io_lib:format("code_change ~s [~s]",
                  [Mode, lists:join(",", [io_lib:format("~s=~s", [M, extra(E)]) || {M, E} <- MEs])]);
fmt({apply, {application, start, [A, _]}}) -> io_lib:format("start_application ~s", [A]);
fmt({apply, {application, stop, [A]}}) -> io_lib:format("stop_application ~s", [A]);
fmt({apply, {application, unload, [A]}}) -> io_lib:format("unload_application ~s", [A]);
fmt({Op, Ms}) when is_list(Ms) -> io_lib:format("~s ~s", [Op, mods(Ms)]);
fmt(Other) -> io_lib:format("unexpected ~tp", [Other]).

mods(Ms) -> ["[", lists:join(",", [mod(M) || M <- Ms]), "]"].
mod({M, T}) -> io_lib:format("~s:~p", [M, T]);
mod(M) -> atom_to_list(M).

extra(B) when is_binary(B) -> [$", binary_to_list(B), $"];
extra(I) when is_integer(I) -> integer_to_list(I);
extra(null) -> "null".
